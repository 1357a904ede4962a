"use strict";
// The public page: plain JS over the published JSON (docs/layout.md), no build step.
// State lives in the hash (#ppwp/31/3101/…) so a link is shareable and Back works.
// Data goes into the page only as text or attribute values (el below): nothing parses HTML, and the
// site's CSP forbids inline script and style besides.
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
  const fmt = (n) => Number(n).toLocaleString("id-ID");
  const pct = (n) => Number(n).toLocaleString("id-ID", { minimumFractionDigits: 2, maximumFractionDigits: 2 }) + "%";
  const colour = (w) => (/^#[0-9a-f]{3,8}$/i.test(w || "") ? w : "#888");

  // el("td", {class: "num", style: {width: "5%"}}, "text", node, [more]): styles through the CSSOM,
  // which the CSP allows (it blocks style attributes).
  function el(tag, attrs, ...kids) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "style") Object.assign(node.style, v);
      else if (v != null && v !== false) node.setAttribute(k, String(v));
    }
    return fill(node, kids);
  }
  function fill(node, ...kids) {
    node.replaceChildren(...kids.flat(Infinity).filter((k) => k != null && k !== "")); // strings: text nodes
    return node;
  }
  const swatch = (w) => el("i", { class: "sw", style: { background: w } });
  const numero = (cand) => String(cand.nomor_urut).padStart(2, "0");

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
      fill(sel, keys.map((k) => el("option", { value: k }, CONTESTS[k] || k)));
      sel.dataset.keys = keys.join();
    }
    sel.value = c;
    const head = snap.chain_head || {};
    const hash = String(head.hash || "");
    fill($("chain"), `Snapshot #${snap.snapshot} · kepala rantai: catatan ke-${head.position ?? "–"}, sidik jari `,
      el("code", { title: hash, "data-hash": hash }, hash.slice(0, 16) + "…"));
  }

  function choiceRows(cands, chart) {
    const ids = Object.keys(cands).sort((a, b) => cands[a].nomor_urut - cands[b].nomor_urut);
    const votes = ids.map((id) => Number((chart && chart[id]) || 0));
    const sum = votes.reduce((a, b) => a + b, 0);
    return ids.map((id, i) => {
      const share = sum ? (votes[i] * 100) / sum : 0;
      const w = colour(cands[id].warna);
      return el("div", { class: "row", "data-choice": id, "data-votes": votes[i] },
        el("span", {}, swatch(w), `${numero(cands[id])} · ${cands[id].nama}`),
        el("div", { class: "bar" }, el("i", { style: { width: share.toFixed(2) + "%", background: w } })),
        el("span", { class: "num" }, el("b", {}, fmt(votes[i])), ` (${pct(share)})`));
    });
  }

  const unavailable = (st) => (st && Array.isArray(st.photos_unavailable) ? st.photos_unavailable.length : 0);

  // `tps`: the flags of one TPS, whose count of quarantined TPS is itself.
  function tags(st, cands, tps) {
    const out = [];
    if (!st) return out;
    const q = st.tps_quarantined;
    if (q) out.push(el("span", { class: "tag q", "data-quarantined": q }, `${tps ? "" : fmt(q) + " TPS "}dikarantina`));
    const rec = typeof st.reconciliation === "string" ? st.reconciliation : st.reconciliation && st.reconciliation.status;
    if (rec) out.push(el("span", { class: "tag " + rec, "data-recon": rec }, "Rekap: " + (RECON[rec] || rec)));
    if (Array.isArray(st.failed_checks) && st.failed_checks.length) {
      out.push(" ", el("span", { class: "muted" }, st.failed_checks.map(String).join("; ")));
    }
    const held = unavailable(st);
    if (held) out.push(" ", el("span", { class: "muted", "data-photos-unavailable": held }, `${held} foto tidak tersedia`));
    const diffs = (st.reconciliation && st.reconciliation.differences) || [];
    if (diffs.length) {
      const label = (f) => String(f).replace(/^votes\[(\d+)\]$/, (_, id) => "suara " + ((cands[id] && cands[id].nama) || id));
      out.push(el("ul", { class: "diff" }, diffs.map((d) =>
        el("li", {}, `${label(d.field)}: rekap ${fmt(d.recap)}, digital ${fmt(d.digital)} (selisih ${fmt(d.difference)})`))));
    }
    return out;
  }

  function childTable(c, codes, cands, data, kids, st) {
    const ids = Object.keys(cands).sort((a, b) => cands[a].nomor_urut - cands[b].nomor_urut);
    const table = data.table || {};
    const items = (kids || []).map((k) => [k.kode, k.nama]);
    for (const code of Object.keys(table)) if (!items.some((it) => it[0] === code)) items.push([code, code]);
    const flags = (st && st.children) || {};
    const head = [
      el("th", {}, LEVELS[codes.length + 1]),
      ids.map((id) => el("th", { class: "num", title: cands[id].nama }, swatch(colour(cands[id].warna)), numero(cands[id]))),
      el("th", { class: "num" }, "Progres"),
      el("th", {}, "Keterangan"),
    ];
    const rows = items.map(([code, nama]) => {
      const e = table[code] || {};
      const cells = ids.map((id) => {
        const label = numero(cands[id]);
        return e.status_progress && id in e
          ? el("td", { class: "num", "data-label": label, "data-choice": id, "data-votes": Number(e[id]) }, fmt(e[id]))
          : el("td", { class: "num", "data-label": label }, "–");
      });
      const flagged = tags(flags[code], cands, codes.length === 4);
      return el("tr", { "data-child": code },
        el("td", { class: "name" }, el("a", { href: hashOf(c, [...codes, code]) }, nama)),
        cells,
        el("td", { class: "num", "data-label": "Progres", "data-persen": Number(e.persen || 0) }, pct(e.persen || 0)),
        el("td", { class: flagged.length ? "note" : "note empty" }, flagged));
    });
    return el("div", { class: "scroll" }, el("table", { class: "areas" }, el("thead", {}, el("tr", {}, head)), el("tbody", {}, rows)));
  }

  // `held`: photos publish held back (the status file's photos_unavailable).
  function tpsDetail(data, held) {
    const out = [el("h2", {}, "Formulir C.Hasil")];
    const adm = data.administrasi;
    if (!adm) out.push(el("p", {}, "Belum ada data formulir dari TPS ini."));
    else {
      const cell = (k) => el("td", { class: "num", "data-tps-field": k }, k in adm ? fmt(adm[k]) : "–");
      const blank = () => el("td");
      const known = new Set(ADM_VOTES.map((v) => v[0]));
      for (const [g] of ADM_GROUPS) for (const s of ["_j", "_l", "_p"]) known.add(g + s);
      const rows = [
        ADM_GROUPS.map(([k, label]) => el("tr", {}, el("td", {}, label), cell(k + "_l"), cell(k + "_p"), cell(k + "_j"))),
        ADM_VOTES.map(([k, label]) => el("tr", {}, el("td", {}, label), blank(), blank(), cell(k))),
        Object.keys(adm).filter((k) => !known.has(k)).map((k) => el("tr", {}, el("td", {}, k), blank(), blank(), cell(k))),
      ];
      const head = el("tr", {}, el("th", {}, "Data pemilih"),
        ["Laki-laki", "Perempuan", "Jumlah"].map((t) => el("th", { class: "num" }, t)));
      out.push(el("div", { class: "scroll" }, el("table", {}, el("thead", {}, head), el("tbody", {}, rows))));
    }
    out.push(el("h2", {}, "Foto formulir"));
    const images = Array.isArray(data.images) ? data.images : [null, null, null];
    const figures = images.map((src, i) => {
      // Site paths ("/foto/…") made relative, for a bucket prefix; http(s) URLs; nothing else (javascript:).
      const url = typeof src === "string" && /^(\/[^/]|https?:\/\/)/.test(src) ? src.replace(/^\//, "") : null;
      let shown;
      if (url) {
        shown = el("a", { href: url, target: "_blank", rel: "noopener", title: "Buka ukuran penuh" },
          el("img", { loading: "lazy", src: url, width: 1240, height: 1754, alt: `Foto formulir C.Hasil halaman ${i + 1}` }));
      } else if (held > 0) {
        held -= 1; // not passed off as never sent
        shown = el("div", { class: "nofoto", "data-unavailable": "" }, "foto tidak tersedia");
      } else {
        shown = el("div", { class: "nofoto" }, "belum ada foto");
      }
      const caption = url ? [`Halaman ${i + 1} · `, el("a", { href: url, target: "_blank", rel: "noopener" }, "ukuran penuh")] : `Halaman ${i + 1}`;
      return el("figure", { "data-photo": i }, shown, el("figcaption", { class: "muted" }, caption));
    });
    out.push(el("div", { class: "photos" }, figures));
    out.push(el("p", { class: "muted" }, `Diperbarui: ${data.ts || "–"} WIB`));
    return out;
  }

  // A CSV of what the page's table shows, made here from the JSON it came from (which stays the source):
  // every field quoted; one that a spreadsheet would run as a formula is prefixed with '.
  function csv(rows) {
    const cell = (v) => {
      const s = String(v ?? "");
      return '"' + (/^[=+\-@\t\r]/.test(s) ? "'" + s : s).replace(/"/g, '""') + '"';
    };
    return "data:text/csv;charset=utf-8," + encodeURIComponent("\ufeff" + rows.map((r) => r.map(cell).join(",")).join("\r\n") + "\r\n");
  }

  function tableCsv(cands, data, kids, codes, names) {
    const ids = Object.keys(cands).sort((a, b) => cands[a].nomor_urut - cands[b].nomor_urut);
    const head = ["kode", "nama", ...ids.map((id) => `${numero(cands[id])} ${cands[id].nama} (${id})`)];
    if (codes.length === 5) {
      const adm = data.administrasi || {};
      const chart = data.chart || {};
      const keys = Object.keys(adm);
      return csv([[...head, ...keys], [codes[4], names[4], ...ids.map((id) => chart[id] ?? ""), ...keys.map((k) => adm[k])]]);
    }
    const table = data.table || {};
    const name = Object.fromEntries((kids || []).map((k) => [k.kode, k.nama]));
    const codesIn = [...(kids || []).map((k) => k.kode), ...Object.keys(table).filter((k) => !(k in name))];
    return csv([[...head, "persen", "dihitung"], ...codesIn.map((k) => {
      const e = table[k] || {};
      return [k, name[k] || k, ...ids.map((id) => (e.status_progress && id in e ? e[id] : "")), e.persen ?? 0, e.status_progress ? 1 : 0];
    })]);
  }

  function downloads(c, codes, cands, data, kids, names) {
    const file = [c, ...codes].join("-") + ".csv";
    return [
      el("h2", {}, "Unduh data"),
      el("ul", { class: "links" },
        el("li", {}, el("a", { href: totalsPath(c, codes), "data-kind": "json", type: "application/json" }, "JSON"), " — angka halaman ini"),
        el("li", {}, el("a", { href: tableCsv(cands, data, kids, codes, names), download: file, "data-kind": "csv", type: "text/csv" }, "CSV"),
          codes.length === 5 ? " — formulir ini" : " — tabel di atas"),
        el("li", {}, el("a", { href: "suara/nist/" + c + ".json", "data-kind": "nist", type: "application/json" }, "NIST SP 1500-100"),
          " — hasil nasional & provinsi"),
        el("li", {}, el("a", { href: "data.html", "data-kind": "about" }, "Tentang data ini, lisensi & cara memeriksa"))),
    ];
  }

  // The night in one small chart: national shares per snapshot, from the history files (docs/layout.md),
  // loaded only when a reader opens it, at most HISTORY_POINTS of them (the first and the latest always).
  const HISTORY_POINTS = 24;
  const SVG = "http://www.w3.org/2000/svg";
  function svgEl(tag, attrs, ...kids) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    node.append(...kids);
    return node;
  }
  function pick(list, n) {
    if (list.length <= n) return list;
    const idx = new Set(Array.from({ length: n }, (_, i) => Math.round((i * (list.length - 1)) / (n - 1))));
    return [...idx].map((i) => list[i]);
  }
  async function history(c, cands) {
    const box = $("history-chart");
    const list = (await get("suara/riwayat/" + c + ".json")) || [];
    const entries = await Promise.all(pick(list, HISTORY_POINTS).map((e) => get(`suara/riwayat/${c}/${e.snapshot}.json`)));
    const ids = Object.keys(cands).sort((a, b) => cands[a].nomor_urut - cands[b].nomor_urut);
    const shares = ids.map(() => []);
    for (const e of entries) {
      const n = (e && e.nasional) || {};
      const sum = ids.reduce((s, id) => s + Number(n[id] || 0), 0);
      ids.forEach((id, i) => shares[i].push(sum ? (Number(n[id] || 0) * 100) / sum : 0));
    }
    if (!entries.length) return fill(box, el("p", { class: "muted" }, "Belum ada riwayat."));
    const W = 600, H = 160;
    const top = Math.min(100, Math.ceil(Math.max(10, ...shares.flat()) / 10) * 10);
    const x = (i) => (entries.length > 1 ? (i * W) / (entries.length - 1) : W / 2);
    const y = (s) => H - (s * H) / top;
    const last = ids.map((id, i) => `${numero(cands[id])} ${pct(shares[i][shares[i].length - 1])}`).join(", ");
    const first = entries[0].ts, end = entries[entries.length - 1].ts;
    const chart = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img",
      "aria-label": `Perolehan suara nasional, ${first} sampai ${end} WIB: ${last}`, "data-snapshots": entries.map((e) => e.snapshot).join(",") },
      ...[0.5, 1].map((f) => svgEl("line", { x1: 0, x2: W, y1: y(top * f), y2: y(top * f), class: "grid" })),
      ...ids.map((id, i) => svgEl(entries.length > 1 ? "polyline" : "circle", {
        ...(entries.length > 1 ? { points: shares[i].map((s, j) => `${x(j).toFixed(1)},${y(s).toFixed(1)}`).join(" ") }
          : { cx: x(0), cy: y(shares[i][0]), r: 4, fill: colour(cands[id].warna) }),
        stroke: colour(cands[id].warna), "data-choice": id, "data-shares": shares[i].map((s) => s.toFixed(2)).join(",") })));
    fill(box, chart,
      el("p", { class: "muted" }, `${first} – ${end} WIB · ${entries.length} snapshot · garis bantu ${top / 2}% dan ${top}%`),
      el("ul", { class: "legend" }, ids.map((id, i) => el("li", {}, swatch(colour(cands[id].warna)),
        `${numero(cands[id])} · ${cands[id].nama}: ${pct(shares[i][shares[i].length - 1])}`))));
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
      fill($("crumbs"), [c, ...codes].map((_, i) => {
        const label = i ? names[i - 1] : LEVELS[0];
        return i === depth ? el("span", {}, label) : el("a", { href: hashOf(c, codes.slice(0, i)) }, label);
      }));
      const title = depth === 5 ? names[4] : depth ? LEVELS[depth] + " " + names[depth - 1] : LEVELS[0];
      $("area-name").textContent = title + " — " + (CONTESTS[c] || c);
      document.title = (depth ? names[depth - 1] + " · " : "") + "Hasil Hitung Suara";
      fill($("chart"), choiceRows(cands, data.chart));
      const prog = $("progress");
      let flags;
      if (depth < 5) {
        const p = data.progres || { progres: 0, total: 0 };
        prog.dataset.progres = p.progres;
        prog.dataset.total = p.total;
        prog.textContent = `Progres: ${fmt(p.progres)} dari ${fmt(p.total)} TPS (${pct((data.chart && data.chart.persen) || 0)})`;
        const own = st || (depth === 0 && { tps_quarantined: (snap.contests[c] || {}).quarantined });
        flags = tags(own, cands);
        fill($("detail"), childTable(c, codes, cands, data, kids, st));
      } else {
        const mark = ((st && st.children) || {})[codes[4]];
        const held = Boolean(mark && mark.tps_quarantined) || (data.chart && !data.status_suara);
        delete prog.dataset.progres;
        delete prog.dataset.total;
        prog.textContent = !data.chart ? "Belum ada data" : held ? "Formulir masuk, dikarantina: tidak dihitung" : "Formulir masuk dan dihitung";
        flags = tags(held ? { tps_quarantined: 1, ...mark } : mark, cands, true);
        fill($("detail"), tpsDetail(data, unavailable(mark)));
      }
      fill($("flags"), flags);
      fill($("downloads"), downloads(c, codes, cands, data, kids, names));
      const past = $("history");
      past.hidden = depth > 0;
      past.dataset.contest = c;
      if (!past.hidden && past.open) history(c, cands).catch(() => fill($("history-chart"), "Riwayat gagal dimuat."));
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
  $("history").addEventListener("toggle", (e) => {
    const c = e.target.dataset.contest;
    if (e.target.open && c) {
      get("pemilu/" + c + ".json").then((cands) => history(c, cands))
        .catch(() => fill($("history-chart"), "Riwayat gagal dimuat."));
    }
  });
  document.addEventListener("visibilitychange", () => document.hidden || poll());
  window.suaraPoll = poll; // lets a test (or a console) check for a new snapshot without waiting 30 s
  setInterval(() => document.hidden || poll(), POLL_MS);
  poll();
})();
