"use strict";
// The public page: plain JS over the published JSON (docs/layout.md), no build step.
// State lives in the hash (#ppwp/31/3101/…) so a link is shareable and Back works.
(() => {
  const LEVELS = ["Nasional", "Provinsi", "Kabupaten/Kota", "Kecamatan", "Desa/Kelurahan", "TPS"];
  const CODE_LEN = [2, 4, 6, 10, 13];
  const CONTESTS = {
    ppwp: "Presiden & Wakil Presiden", pdpr: "DPR RI", pdpd: "DPD RI", pdprdp: "DPRD Provinsi",
    pdprdk: "DPRD Kabupaten/Kota", pkwkp: "Gubernur", pkwkk: "Bupati/Wali Kota",
  };
  const RECON = { MATCH: "COCOK", MISMATCH: "TIDAK COCOK", INCOMPLETE: "BELUM LENGKAP", NO_RECAP: "BELUM ADA REKAP" };
  const ADM_GROUPS = [
    ["pemilih_dpt", "Pemilih terdaftar (DPT)"], ["pengguna_dpt", "Pengguna hak pilih DPT"],
    ["pengguna_dptb", "Pengguna DPTb"], ["pengguna_non_dpt", "Pengguna non-DPT (DPK)"],
    ["pengguna_total", "Jumlah pengguna hak pilih"],
  ];
  const ADM_VOTES = [["suara_sah", "Suara sah"], ["suara_tidak_sah", "Suara tidak sah"], ["suara_total", "Jumlah suara"]];
  const POLL_MS = 30000;

  const $ = (id) => document.getElementById(id);
  const esc = (s) => String(s).replace(/[&<>"']/g, (ch) => "&#" + ch.charCodeAt(0) + ";");
  const fmt = (n) => Number(n).toLocaleString("id-ID");
  const pct = (n) => Number(n).toLocaleString("id-ID", { minimumFractionDigits: 2, maximumFractionDigits: 2 }) + "%";
  const colour = (w) => (/^#[0-9a-f]{3,8}$/i.test(w || "") ? w : "#888");

  let snap = null;
  let fresh = false; // after a snapshot change, revalidate instead of trusting the HTTP cache's max-age
  let seq = 0; // the newest render wins when navigations overlap
  const slow = new Map(); // region lists and candidates: they outlive snapshots
  const perSnap = new Map(); // totals and status files: dropped when the snapshot moves on

  function get(path, optional) {
    const memo = path.startsWith("wilayah/") || path.split("/").length === 2 ? slow : perSnap;
    if (!memo.has(path)) {
      const p = fetch(path, fresh ? { cache: "no-cache" } : {}).then((r) => {
        if (r.ok) return r.json();
        if (optional && r.status === 404) return null; // suara's status files exist only where published
        throw new Error(path + ": HTTP " + r.status);
      });
      memo.set(path, p);
      p.catch(() => memo.delete(path));
    }
    return memo.get(path);
  }

  const join = (c, codes, top) => (codes.length ? c + "/" + codes.join("/") : top);
  const totalsPath = (c, codes) => "pemilu/hhcw/" + join(c, codes, c) + ".json";
  const listPath = (c, codes) => "wilayah/pemilu/" + c + "/" + (codes.length ? codes.join("/") : "0") + ".json";
  const statusPath = (c, codes) => "suara/status/" + join(c, codes, c) + ".json";
  const hashOf = (c, codes) => "#" + [c, ...codes].join("/");

  function route() {
    const parts = decodeURIComponent(location.hash.slice(1)).split("/").filter(Boolean);
    const contests = Object.keys((snap && snap.contests) || {});
    const c = contests.includes(parts[0]) ? parts[0] : contests[0] || "ppwp";
    const codes = [];
    for (const code of parts.slice(1)) {
      const ok = code.length === CODE_LEN[codes.length] && /^\d+$/.test(code);
      if (!ok || (codes.length && !code.startsWith(codes[codes.length - 1]))) break; // keep the valid prefix
      codes.push(code);
    }
    return [c, codes];
  }

  function header(c) {
    $("last-updated").textContent = "Terakhir diperbarui: " + snap.ts + " WIB";
    $("last-updated").dataset.ts = snap.ts;
    const sel = $("contest");
    const keys = Object.keys(snap.contests || {});
    if (sel.dataset.keys !== keys.join()) {
      sel.innerHTML = keys.map((k) => `<option value="${esc(k)}">${esc(CONTESTS[k] || k)}</option>`).join("");
      sel.dataset.keys = keys.join();
    }
    sel.value = c;
    const head = snap.chain_head || {};
    $("chain").innerHTML =
      `Snapshot #${esc(snap.snapshot)} · rantai posisi ${esc(head.position ?? "–")} · hash ` +
      `<code title="${esc(head.hash || "")}">${esc((head.hash || "").slice(0, 16))}…</code>`;
  }

  function choiceRows(cands, chart) {
    const ids = Object.keys(cands).sort((a, b) => cands[a].nomor_urut - cands[b].nomor_urut);
    const votes = ids.map((id) => Number((chart && chart[id]) || 0));
    const sum = votes.reduce((a, b) => a + b, 0);
    return ids
      .map((id, i) => {
        const share = sum ? (votes[i] * 100) / sum : 0;
        const w = colour(cands[id].warna);
        return (
          `<div class="row" data-choice="${esc(id)}" data-votes="${votes[i]}">` +
          `<span><i class="sw" style="background:${w}"></i>${String(cands[id].nomor_urut).padStart(2, "0")} · ${esc(cands[id].nama)}</span>` +
          `<div class="bar"><i style="width:${share.toFixed(2)}%;background:${w}"></i></div>` +
          `<span class="num"><b>${fmt(votes[i])}</b> (${pct(share)})</span></div>`
        );
      })
      .join("");
  }

  // `tps`: the flags of one TPS, whose count of quarantined TPS is itself.
  function tags(st, cands, tps) {
    if (!st) return "";
    let h = "";
    const q = st.tps_quarantined;
    if (q) h += `<span class="tag q" data-quarantined="${q}">${tps ? "" : fmt(q) + " TPS "}dikarantina</span>`;
    const rec = typeof st.reconciliation === "string" ? st.reconciliation : st.reconciliation && st.reconciliation.status;
    if (rec) h += `<span class="tag ${esc(rec)}" data-recon="${esc(rec)}">Rekap: ${esc(RECON[rec] || rec)}</span>`;
    if (st.failed_checks && st.failed_checks.length) h += ` <span class="muted">${st.failed_checks.map(esc).join("; ")}</span>`;
    const diffs = (st.reconciliation && st.reconciliation.differences) || [];
    if (diffs.length) {
      const label = (f) => f.replace(/^votes\[(\d+)\]$/, (_, id) => "suara " + ((cands[id] && cands[id].nama) || id));
      h += '<ul class="diff">' + diffs.map((d) =>
        `<li>${esc(label(d.field))}: rekap ${fmt(d.recap)}, digital ${fmt(d.digital)} (selisih ${fmt(d.difference)})</li>`
      ).join("") + "</ul>";
    }
    return h;
  }

  function childTable(c, codes, cands, data, kids, st) {
    const ids = Object.keys(cands).sort((a, b) => cands[a].nomor_urut - cands[b].nomor_urut);
    const table = data.table || {};
    const items = (kids || []).map((k) => [k.kode, k.nama]);
    for (const code of Object.keys(table)) if (!items.some((it) => it[0] === code)) items.push([code, code]);
    const flags = (st && st.children) || {};
    const head =
      `<th>${LEVELS[codes.length + 1]}</th>` +
      ids.map((id) => `<th class="num" title="${esc(cands[id].nama)}"><i class="sw" style="background:${colour(cands[id].warna)}"></i>${String(cands[id].nomor_urut).padStart(2, "0")}</th>`).join("") +
      '<th class="num">Progres</th><th>Keterangan</th>';
    const rows = items.map(([code, nama]) => {
      const e = table[code] || {};
      const cells = ids.map((id) =>
        e.status_progress && id in e ? `<td class="num" data-choice="${esc(id)}" data-votes="${Number(e[id])}">${fmt(e[id])}</td>` : '<td class="num">–</td>'
      ).join("");
      return (
        `<tr data-child="${esc(code)}"><td><a href="${hashOf(c, [...codes, code])}">${esc(nama)}</a></td>${cells}` +
        `<td class="num" data-persen="${Number(e.persen || 0)}">${pct(e.persen || 0)}</td><td>${tags(flags[code], cands, codes.length === 4)}</td></tr>`
      );
    });
    return `<div class="scroll"><table><thead><tr>${head}</tr></thead><tbody>${rows.join("")}</tbody></table></div>`;
  }

  function tpsDetail(data) {
    let h = "<h2>Formulir C.Hasil</h2>";
    const adm = data.administrasi;
    if (!adm) h += "<p>Belum ada data formulir dari TPS ini.</p>";
    else {
      const cell = (k) => `<td class="num" data-tps-field="${k}">${k in adm ? fmt(adm[k]) : "–"}</td>`;
      h += '<div class="scroll"><table><thead><tr><th>Data pemilih</th><th class="num">Laki-laki</th><th class="num">Perempuan</th><th class="num">Jumlah</th></tr></thead><tbody>';
      h += ADM_GROUPS.map(([k, label]) => `<tr><td>${label}</td>${cell(k + "_l")}${cell(k + "_p")}${cell(k + "_j")}</tr>`).join("");
      h += ADM_VOTES.map(([k, label]) => `<tr><td>${label}</td><td></td><td></td>${cell(k)}</tr>`).join("");
      const known = new Set(ADM_VOTES.map((v) => v[0]));
      for (const [g] of ADM_GROUPS) for (const s of ["_j", "_l", "_p"]) known.add(g + s);
      for (const k of Object.keys(adm)) if (!known.has(k)) h += `<tr><td>${esc(k)}</td><td></td><td></td>${cell(esc(k))}</tr>`;
      h += "</tbody></table></div>";
    }
    h += '<h2>Foto formulir</h2><div class="photos">';
    (data.images || [null, null, null]).forEach((src, i) => {
      // Site paths start with "/": made relative so the site also works under a bucket prefix.
      // Anything but a site path or an http(s) URL (javascript:, data:) is not a photo.
      const url = /^(\/[^/]|https?:\/\/)/.test(src || "") ? src.replace(/^\//, "") : null;
      h += `<figure data-photo="${i}">` + (url
        ? `<a href="${esc(url)}"><img loading="lazy" src="${esc(url)}" alt="Foto formulir halaman ${i + 1}"></a>`
        : '<div class="nofoto">belum ada foto</div>') + `<figcaption class="muted">Halaman ${i + 1}</figcaption></figure>`;
    });
    return h + `</div><p class="muted">Diperbarui: ${esc(data.ts || "–")} WIB</p>`;
  }

  async function render() {
    const mine = ++seq;
    const [c, codes] = route();
    const depth = codes.length;
    const body = document.body;
    body.dataset.state = "loading";
    try {
      const [cands, data, st, kids, ...ancestors] = await Promise.all([
        get("pemilu/" + c + ".json"),
        get(totalsPath(c, codes)),
        // A TPS has no status file of its own: its flags are a child entry of its desa's.
        get(statusPath(c, depth === 5 ? codes.slice(0, 4) : codes), true),
        depth < 5 ? get(listPath(c, codes)) : null,
        ...codes.map((_, i) => get(listPath(c, codes.slice(0, i)))),
      ]);
      if (mine !== seq) return;
      header(c);
      const names = codes.map((code, i) => ((ancestors[i] || []).find((k) => k.kode === code) || {}).nama || code);
      $("crumbs").innerHTML = [c, ...codes]
        .map((_, i) => {
          const label = i ? names[i - 1] : LEVELS[0];
          return i === depth ? `<span>${esc(label)}</span>` : `<a href="${hashOf(c, codes.slice(0, i))}">${esc(label)}</a>`;
        })
        .join("");
      const title = depth === 5 ? names[4] : depth ? LEVELS[depth] + " " + names[depth - 1] : LEVELS[0];
      $("area-name").textContent = title + " — " + (CONTESTS[c] || c);
      document.title = (depth ? names[depth - 1] + " · " : "") + "Hasil Hitung Suara";
      $("chart").innerHTML = choiceRows(cands, data.chart);
      const prog = $("progress");
      let flags;
      if (depth < 5) {
        const p = data.progres || { progres: 0, total: 0 };
        prog.dataset.progres = p.progres;
        prog.dataset.total = p.total;
        prog.textContent = `Progres: ${fmt(p.progres)} dari ${fmt(p.total)} TPS (${pct((data.chart && data.chart.persen) || 0)})`;
        const own = st || (depth === 0 && { tps_quarantined: (snap.contests[c] || {}).quarantined });
        flags = tags(own, cands);
        $("detail").innerHTML = childTable(c, codes, cands, data, kids, st);
      } else {
        const mark = ((st && st.children) || {})[codes[4]];
        const held = Boolean(mark) || (data.chart && !data.status_suara);
        delete prog.dataset.progres;
        delete prog.dataset.total;
        prog.textContent = !data.chart ? "Belum ada data" : held ? "Formulir masuk, dikarantina: tidak dihitung" : "Formulir masuk dan dihitung";
        flags = held ? tags(mark || { tps_quarantined: 1 }, cands, true) : "";
        $("detail").innerHTML = tpsDetail(data);
      }
      $("flags").innerHTML = flags;
      $("error").hidden = true;
      body.dataset.state = "ready";
    } catch (err) {
      if (mine !== seq) return;
      $("error").textContent = "Gagal memuat data (" + err.message + "). Dicoba lagi otomatis.";
      $("error").hidden = false;
      body.dataset.state = "error";
    }
    body.dataset.view = [c, ...codes].join("/");
  }

  async function poll() {
    try {
      const r = await fetch("suara/snapshot.json", { cache: "no-cache" });
      if (!r.ok) throw new Error("suara/snapshot.json: HTTP " + r.status);
      const next = await r.json();
      const changed = !snap || next.snapshot !== snap.snapshot || next.generated_at !== snap.generated_at;
      if (snap) fresh = true;
      snap = next;
      document.body.dataset.snapshot = snap.snapshot;
      if (changed || document.body.dataset.state === "error") {
        perSnap.clear();
        await render();
      }
    } catch (err) {
      if (!snap) {
        $("error").textContent = "Gagal memuat data (" + err.message + ").";
        $("error").hidden = false;
        document.body.dataset.state = "error";
      }
    }
  }

  $("contest").addEventListener("change", (e) => { location.hash = hashOf(e.target.value, []); });
  $("detail").addEventListener("click", (e) => {
    const tr = e.target.closest("tr[data-child]");
    if (tr && !e.target.closest("a")) location.hash = tr.querySelector("a").getAttribute("href");
  });
  window.addEventListener("hashchange", () => snap && render());
  document.addEventListener("visibilitychange", () => document.hidden || poll());
  window.suaraPoll = poll; // lets a test (or a console) check for a new snapshot without waiting 30 s
  setInterval(() => document.hidden || poll(), POLL_MS);
  poll();
})();
