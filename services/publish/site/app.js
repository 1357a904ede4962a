"use strict";
// The public page: plain JS over the published JSON (docs/layout.md), no build step.
// State lives in the hash (#ppwp/31/3101/…) so a link is shareable and Back works.
// Data goes into the page only as text or attribute values (el below): nothing parses HTML, and the
// site's CSP forbids inline script and style besides.
(() => {
  // Labels in Bahasa Indonesia, and in English for who asks (the button; kept in localStorage). Names and
  // numbers are never translated.
  let lang = "id";
  try {
    if (localStorage.getItem("suara-lang") === "en") lang = "en";
  } catch (e) { /* storage refused: Indonesian */ }
  const L = (id, en) => (lang === "en" ? en : id);
  const LEVELS = [["Nasional", "National"], ["Provinsi", "Province"], ["Kabupaten/Kota", "Regency/City"],
    ["Kecamatan", "District"], ["Desa/Kelurahan", "Village"], ["TPS", "Polling station"]];
  const level = (i) => L(...LEVELS[i]);
  const CODE_LEN = [2, 4, 6, 10, 13];
  const CONTESTS = {
    ppwp: ["Presiden & Wakil Presiden", "President & Vice President"], pdpr: ["DPR RI"], pdpd: ["DPD RI"],
    pdprdp: ["DPRD Provinsi", "Provincial DPRD"], pdprdk: ["DPRD Kabupaten/Kota", "Regency/City DPRD"],
    pkwkp: ["Gubernur", "Governor"], pkwkk: ["Bupati/Wali Kota", "Regent/Mayor"],
  };
  const contestName = (c) => (CONTESTS[c] ? L(CONTESTS[c][0], CONTESTS[c][1] || CONTESTS[c][0]) : c);
  const RECON = { MATCH: ["COCOK", "MATCHES"], MISMATCH: ["TIDAK COCOK", "DOES NOT MATCH"],
    INCOMPLETE: ["BELUM LENGKAP", "INCOMPLETE"], NO_RECAP: ["BELUM ADA REKAP", "NO RECAP YET"] };
  const ADM_GROUPS = [
    ["pemilih_dpt", "Pemilih terdaftar (DPT)", "Registered voters (DPT)"],
    ["pengguna_dpt", "Pengguna hak pilih DPT", "Voters from the DPT"],
    ["pengguna_dptb", "Pengguna DPTb", "Voters from the DPTb"],
    ["pengguna_non_dpt", "Pengguna non-DPT (DPK)", "Voters not on a list (DPK)"],
    ["pengguna_total", "Jumlah pengguna hak pilih", "Voters in total"],
  ];
  const ADM_VOTES = [["suara_sah", "Suara sah", "Valid votes"], ["suara_tidak_sah", "Suara tidak sah", "Invalid votes"],
    ["suara_total", "Jumlah suara", "Votes in total"]];
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
        // A rehearsal's files carry "simulasi" (docs/layout.md): not a candidate, not a number.
        if (r.ok) return r.json().then((d) => { if (d && typeof d === "object" && !Array.isArray(d)) delete d.simulasi; return d; });
        if (optional && r.status === 404) return null; // suara's status files exist only where published
        throw new Error(path + ": HTTP " + r.status);
      });
      memo.set(path, p);
      p.catch(() => memo.delete(path));
    }
    return memo.get(path);
  }

  // A rehearsal's pages carry a SIMULASI banner (published into the page): the title keeps saying so too.
  const simulasi = () => (document.querySelector("body > .simulasi") ? "SIMULASI — " : "");
  const join = (c, codes, top) => (codes.length ? c + "/" + codes.join("/") : top);
  const totalsPath = (c, codes) => "pemilu/hhcw/" + join(c, codes, c) + ".json";
  const listPath = (c, codes) => "wilayah/pemilu/" + c + "/" + (codes.length ? codes.join("/") : "0") + ".json";
  const statusPath = (c, codes) => "suara/status/" + join(c, codes, c) + ".json";
  const recapPath = (c, codes) => "suara/rekap/" + c + "/" + codes.join("/") + ".json";
  // "#anomali/ppwp/31": the anomalies of an area (its flagged children, from its status file).
  const ANOMALIES = "anomali";
  const hashOf = (c, codes, anomalies) => "#" + (anomalies ? ANOMALIES + "/" : "") + [c, ...codes].join("/");

  function route() {
    let parts = decodeURIComponent(location.hash.slice(1)).split("/").filter(Boolean);
    const anomalies = parts[0] === ANOMALIES;
    if (anomalies) parts = parts.slice(1);
    const contests = Object.keys((snap && snap.contests) || {});
    const c = contests.includes(parts[0]) ? parts[0] : contests[0] || "ppwp";
    const codes = [];
    for (const code of parts.slice(1)) {
      const ok = code.length === CODE_LEN[codes.length] && /^\d+$/.test(code);
      if (!ok || (codes.length && !code.startsWith(codes[codes.length - 1]))) break; // keep the valid prefix
      codes.push(code);
    }
    return [c, anomalies && codes.length < 5 ? codes : null, codes];
  }

  function header(c) {
    $("last-updated").textContent = L("Terakhir diperbarui: ", "Last updated: ") + snap.ts + " WIB";
    $("last-updated").dataset.ts = snap.ts;
    const sel = $("contest");
    const keys = Object.keys(snap.contests || {});
    if (sel.dataset.keys !== lang + keys.join()) {
      fill(sel, keys.map((k) => el("option", { value: k }, contestName(k))));
      sel.dataset.keys = lang + keys.join();
    }
    sel.value = c;
    const head = snap.chain_head || {};
    const hash = String(head.hash || "");
    fill($("chain"), `Snapshot #${snap.snapshot} · ` + L(`kepala rantai: catatan ke-${head.position ?? "–"}, sidik jari `,
      `chain head: record ${head.position ?? "–"}, hash `),
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
    if (q) out.push(el("span", { class: "tag q", "data-quarantined": q }, `${tps ? "" : fmt(q) + " TPS "}` + L("dikarantina", "quarantined")));
    const rec = typeof st.reconciliation === "string" ? st.reconciliation : st.reconciliation && st.reconciliation.status;
    if (rec) out.push(el("span", { class: "tag " + rec, "data-recon": rec }, L("Rekap: ", "Recap: ") + (RECON[rec] ? L(...RECON[rec]) : rec)));
    if (Array.isArray(st.failed_checks) && st.failed_checks.length) {
      out.push(" ", el("span", { class: "muted" }, st.failed_checks.map(String).join("; ")));
    }
    const held = unavailable(st);
    if (held) out.push(" ", el("span", { class: "muted", "data-photos-unavailable": held }, L(`${held} foto tidak tersedia`, `${held} photo(s) unavailable`)));
    const diffs = (st.reconciliation && st.reconciliation.differences) || [];
    if (diffs.length) {
      const label = (f) => String(f).replace(/^votes\[(\d+)\]$/, (_, id) => L("suara ", "votes ") + ((cands[id] && cands[id].nama) || id));
      out.push(el("ul", { class: "diff" }, diffs.map((d) =>
        el("li", {}, `${label(d.field)}: ` + L(`rekap ${fmt(d.recap)}, digital ${fmt(d.digital)} (selisih ${fmt(d.difference)})`,
        `recap ${fmt(d.recap)}, digital ${fmt(d.digital)} (difference ${fmt(d.difference)})`)))));
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
      el("th", {}, level(codes.length + 1)),
      ids.map((id) => el("th", { class: "num", title: cands[id].nama }, swatch(colour(cands[id].warna)), numero(cands[id]))),
      el("th", { class: "num" }, L("Progres", "Progress")),
      el("th", {}, L("Keterangan", "Notes")),
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
        el("td", { class: "num", "data-label": L("Progres", "Progress"), "data-persen": Number(e.persen || 0) }, pct(e.persen || 0)),
        el("td", { class: flagged.length ? "note" : "note empty" }, flagged));
    });
    return el("div", { class: "scroll" }, el("table", { class: "areas" }, el("thead", {}, el("tr", {}, head)), el("tbody", {}, rows)));
  }

  // `held`: photos publish held back (the status file's photos_unavailable).
  function tpsDetail(data, held) {
    const out = [el("h2", {}, L("Formulir C.Hasil", "C.Hasil form"))];
    const adm = data.administrasi;
    if (!adm) out.push(el("p", {}, L("Belum ada data formulir dari TPS ini.", "No form from this polling station yet.")));
    else {
      const cell = (k) => el("td", { class: "num", "data-tps-field": k }, k in adm ? fmt(adm[k]) : "–");
      const blank = () => el("td");
      const known = new Set(ADM_VOTES.map((v) => v[0]));
      for (const [g] of ADM_GROUPS) for (const s of ["_j", "_l", "_p"]) known.add(g + s);
      const rows = [
        ADM_GROUPS.map(([k, id, en]) => el("tr", {}, el("td", {}, L(id, en)), cell(k + "_l"), cell(k + "_p"), cell(k + "_j"))),
        ADM_VOTES.map(([k, id, en]) => el("tr", {}, el("td", {}, L(id, en)), blank(), blank(), cell(k))),
        Object.keys(adm).filter((k) => !known.has(k)).map((k) => el("tr", {}, el("td", {}, k), blank(), blank(), cell(k))),
      ];
      const head = el("tr", {}, el("th", {}, L("Data pemilih", "Voters")),
        [L("Laki-laki", "Men"), L("Perempuan", "Women"), L("Jumlah", "Total")].map((t) => el("th", { class: "num" }, t)));
      out.push(el("div", { class: "scroll" }, el("table", {}, el("thead", {}, head), el("tbody", {}, rows))));
    }
    out.push(el("h2", {}, L("Foto formulir", "Form photos")));
    const images = Array.isArray(data.images) ? data.images : [null, null, null];
    const figures = images.map((src, i) => {
      // Site paths ("/foto/…") made relative, for a bucket prefix; http(s) URLs; nothing else (javascript:).
      const url = typeof src === "string" && /^(\/[^/]|https?:\/\/)/.test(src) ? src.replace(/^\//, "") : null;
      let shown;
      if (url) {
        shown = el("a", { href: url, target: "_blank", rel: "noopener", title: L("Buka ukuran penuh", "Open full size") },
          el("img", { loading: "lazy", src: url, width: 1240, height: 1754, alt: L(`Foto formulir C.Hasil halaman ${i + 1}`, `Photo of the C.Hasil form, page ${i + 1}`) }));
      } else if (held > 0) {
        held -= 1; // not passed off as never sent
        shown = el("div", { class: "nofoto", "data-unavailable": "" }, L("foto tidak tersedia", "photo unavailable"));
      } else {
        shown = el("div", { class: "nofoto" }, L("belum ada foto", "no photo yet"));
      }
      const page = L("Halaman ", "Page ") + (i + 1);
      const caption = url ? [page + " · ", el("a", { href: url, target: "_blank", rel: "noopener" }, L("ukuran penuh", "full size"))] : page;
      return el("figure", { "data-photo": i }, shown, el("figcaption", { class: "muted" }, caption));
    });
    out.push(el("div", { class: "photos" }, figures));
    out.push(el("p", { class: "muted" }, L("Diperbarui: ", "Updated: ") + `${data.ts || "–"} WIB`));
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
      el("h2", {}, L("Unduh data", "Download the data")),
      el("ul", { class: "links" },
        el("li", {}, el("a", { href: totalsPath(c, codes), "data-kind": "json", type: "application/json" }, "JSON"), L(" — angka halaman ini", " — this page's numbers")),
        el("li", {}, el("a", { href: tableCsv(cands, data, kids, codes, names), download: file, "data-kind": "csv", type: "text/csv" }, "CSV"),
          codes.length === 5 ? L(" — formulir ini", " — this form") : L(" — tabel di atas", " — the table above")),
        el("li", {}, el("a", { href: "suara/nist/" + c + ".json", "data-kind": "nist", type: "application/json" }, "NIST SP 1500-100"),
          L(" — hasil nasional & provinsi", " — national and provincial results")),
        el("li", {}, el("a", { href: "data.html", "data-kind": "about" },
          L("Tentang data ini, lisensi & cara memeriksa", "About the data, its licence and how to check it")))),
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
    if (!entries.length) return fill(box, el("p", { class: "muted" }, L("Belum ada riwayat.", "No history yet.")));
    const W = 600, H = 160;
    const top = Math.min(100, Math.ceil(Math.max(10, ...shares.flat()) / 10) * 10);
    const x = (i) => (entries.length > 1 ? (i * W) / (entries.length - 1) : W / 2);
    const y = (s) => H - (s * H) / top;
    const last = ids.map((id, i) => `${numero(cands[id])} ${pct(shares[i][shares[i].length - 1])}`).join(", ");
    const first = entries[0].ts, end = entries[entries.length - 1].ts;
    const chart = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img",
      "aria-label": L(`Perolehan suara nasional, ${first} sampai ${end} WIB: ${last}`, `National votes, ${first} to ${end} WIB: ${last}`), "data-snapshots": entries.map((e) => e.snapshot).join(",") },
      ...[0.5, 1].map((f) => svgEl("line", { x1: 0, x2: W, y1: y(top * f), y2: y(top * f), class: "grid" })),
      ...ids.map((id, i) => svgEl(entries.length > 1 ? "polyline" : "circle", {
        ...(entries.length > 1 ? { points: shares[i].map((s, j) => `${x(j).toFixed(1)},${y(s).toFixed(1)}`).join(" ") }
          : { cx: x(0), cy: y(shares[i][0]), r: 4, fill: colour(cands[id].warna) }),
        stroke: colour(cands[id].warna), "data-choice": id, "data-shares": shares[i].map((s) => s.toFixed(2)).join(",") })));
    fill(box, chart,
      el("p", { class: "muted" }, `${first} – ${end} WIB · ${entries.length} snapshot · ` + L(`garis bantu ${top / 2}% dan ${top}%`, `guides at ${top / 2}% and ${top}%`)),
      el("ul", { class: "legend" }, ids.map((id, i) => el("li", {}, swatch(colour(cands[id].warna)),
        `${numero(cands[id])} · ${cands[id].nama}: ${pct(shares[i][shares[i].length - 1])}`))));
  }

  async function render() {
    const mine = ++seq;
    const [c, anomalyCodes, codes] = route();
    const depth = codes.length;
    const body = document.body;
    body.dataset.state = "loading";
    if (anomalyCodes) return anomalies(mine, c, anomalyCodes);
    try {
      const [cands, counted, st, kids, ...ancestors] = await Promise.all([
        get("pemilu/" + c + ".json"),
        get(totalsPath(c, codes), true), // none before the first form: the site is its skeleton then
        // A TPS has no status file of its own: its flags are a child entry of its desa's.
        get(statusPath(c, depth === 5 ? codes.slice(0, 4) : codes), true),
        depth < 5 ? get(listPath(c, codes)) : null,
        ...codes.map((_, i) => get(listPath(c, codes.slice(0, i)))),
      ]);
      if (mine !== seq) return;
      const data = counted || { chart: null, table: {}, progres: null };
      header(c);
      const names = codes.map((code, i) => ((ancestors[i] || []).find((k) => k.kode === code) || {}).nama || code);
      fill($("crumbs"), [c, ...codes].map((_, i) => {
        const label = i ? names[i - 1] : level(0);
        return i === depth ? el("span", {}, label) : el("a", { href: hashOf(c, codes.slice(0, i)) }, label);
      }));
      const title = depth === 5 ? names[4] : depth ? level(depth) + " " + names[depth - 1] : level(0);
      $("area-name").textContent = title + " — " + contestName(c);
      document.title = simulasi() + (depth ? names[depth - 1] + " · " : "") + L("Hasil Hitung Suara", "Vote count results");
      fill($("chart"), choiceRows(cands, data.chart));
      const prog = $("progress");
      delete prog.dataset.quarantined; // the anomalies view's
      let flags;
      if (depth < 5) {
        // No totals file before the first form: the pointer still knows the national TPS count.
        const p = data.progres || (depth === 0 && snap && snap.contests[c]) || { progres: 0, total: 0 };
        prog.dataset.progres = p.progres;
        prog.dataset.total = p.total;
        prog.textContent = L("Progres: ", "Progress: ") + `${fmt(p.progres)} ` + L("dari", "of") + ` ${fmt(p.total)} TPS (${pct((data.chart && data.chart.persen) || 0)})`;
        const own = st || (depth === 0 && { tps_quarantined: (snap.contests[c] || {}).quarantined });
        flags = tags(own, cands);
        const flagged = Object.keys((st && st.children) || {}).length;
        if (flagged || (own && own.tps_quarantined)) {
          flags.push(" ", el("a", { href: hashOf(c, codes, true), "data-anomalies": "" },
            L(`Anomali di wilayah ini (${fmt(flagged)} ${depth === 4 ? "TPS" : "wilayah"})`,
              `Anomalies in this area (${fmt(flagged)} ${depth === 4 ? "polling stations" : "areas"})`)));
        }
        fill($("detail"), childTable(c, codes, cands, data, kids, st));
      } else {
        const mark = ((st && st.children) || {})[codes[4]];
        const held = Boolean(mark && mark.tps_quarantined) || (data.chart && !data.status_suara);
        delete prog.dataset.progres;
        delete prog.dataset.total;
        prog.textContent = !data.chart ? L("Belum ada data", "No data yet")
          : held ? L("Formulir masuk, dikarantina: tidak dihitung", "Form received, quarantined: not counted")
          : L("Formulir masuk dan dihitung", "Form received and counted");
        flags = tags(held ? { tps_quarantined: 1, ...mark } : mark, cands, true);
        fill($("detail"), tpsDetail(data, unavailable(mark)));
      }
      fill($("flags"), flags);
      fill($("downloads"), downloads(c, codes, cands, data, kids, names));
      const past = $("history");
      past.hidden = depth > 0;
      past.dataset.contest = c;
      if (!past.hidden && past.open) history(c, cands).catch(() => fill($("history-chart"), L("Riwayat gagal dimuat.", "The history could not be loaded.")));
      $("error").hidden = true;
      body.dataset.state = "ready";
    } catch (err) {
      if (mine !== seq) return;
      $("error").textContent = L("Gagal memuat data (", "Could not load the data (") + err.message + L("). Dicoba lagi otomatis.", "). Retrying automatically.");
      $("error").hidden = false;
      body.dataset.state = "error";
    }
    body.dataset.view = [c, ...codes].join("/");
  }

  // A recap that differs, with the units it sums: rekap.js, loaded only then.
  let rekap = null;
  const recapView = () => rekap || (rekap = new Promise((ok, bad) => {
    const script = el("script", { src: "rekap.js" });
    script.onload = () => ok(window.suaraRekap);
    script.onerror = () => { rekap = null; bad(new Error("rekap.js")); };
    document.head.append(script);
  }));

  // An area's anomalies, as KawalPemilu showed them: counts, its recap, each flagged child linked down.
  async function anomalies(mine, c, codes) {
    const depth = codes.length;
    const body = document.body;
    try {
      const [cands, st, kids, ...ancestors] = await Promise.all([
        get("pemilu/" + c + ".json"),
        get(statusPath(c, codes), true),
        get(listPath(c, codes)),
        ...codes.map((_, i) => get(listPath(c, codes.slice(0, i)))),
      ]);
      if (mine !== seq) return;
      header(c);
      const names = codes.map((code, i) => ((ancestors[i] || []).find((k) => k.kode === code) || {}).nama || code);
      fill($("crumbs"), [c, ...codes].map((_, i) => {
        const label = i ? names[i - 1] : level(0);
        return i === depth ? el("span", {}, label) : el("a", { href: hashOf(c, codes.slice(0, i), true) }, label);
      }));
      const area = depth ? level(depth) + " " + names[depth - 1] : level(0);
      $("area-name").textContent = L("Anomali: ", "Anomalies: ") + area + " — " + contestName(c);
      document.title = simulasi() + L("Anomali", "Anomalies") + (depth ? " · " + names[depth - 1] : "") + " · " + L("Hasil Hitung Suara", "Vote count results");
      const children = (st && st.children) || {};
      const codesIn = Object.keys(children);
      const q = st ? Number(st.tps_quarantined || 0) : depth === 0 ? Number((snap.contests[c] || {}).quarantined || 0) : 0;
      const mismatches = st ? Number(st.recap_mismatches || 0) : 0; // its own and every recap below
      const prog = $("progress");
      delete prog.dataset.progres;
      delete prog.dataset.total;
      prog.dataset.quarantined = q;
      prog.dataset.recapMismatches = mismatches;
      prog.textContent = L(`${fmt(q)} TPS dikarantina · ${fmt(mismatches)} rekap tidak cocok di wilayah ini`,
        `${fmt(q)} polling stations quarantined · ${fmt(mismatches)} recaps in this area do not match`);
      fill($("flags"), tags(st ? { ...st, tps_quarantined: 0 } : null, cands),
        " ", el("a", { href: hashOf(c, codes) }, L("Kembali ke hasil", "Back to the results")));
      fill($("chart"));
      $("history").hidden = true;
      const name = Object.fromEntries((kids || []).map((k) => [k.kode, k.nama]));
      const tps = depth === 4;
      const RM = L("Rekap tidak cocok", "Recaps not matching");
      const rows = codesIn.map((k) => el("tr", { "data-child": k },
        el("td", { class: "name" }, el("a", { href: hashOf(c, [...codes, k], !tps) }, name[k] || k)),
        el("td", { class: "num", "data-label": L("Dikarantina", "Quarantined"), "data-quarantined": Number(children[k].tps_quarantined || 0) },
          fmt(children[k].tps_quarantined || 0)),
        el("td", { class: "num", "data-label": RM, "data-recap-mismatches": Number(children[k].recap_mismatches || 0) },
          fmt(children[k].recap_mismatches || 0)),
        el("td", { class: "note" }, tags({ ...children[k], tps_quarantined: 0 }, cands, tps))));
      const [recap, draw] = st && st.reconciliation && (st.reconciliation.differences || []).length && depth >= 1 && depth <= 3
        ? await Promise.all([get(recapPath(c, codes), true), recapView()]) : [null, null];
      if (mine !== seq) return;
      fill($("detail"), recap ? draw({ el, L, fmt, numero, hashOf, level, RECON }, c, codes, cands, recap, recapPath(c, codes)) : [], codesIn.length
        ? el("div", { class: "scroll" }, el("table", { class: "areas" },
          el("thead", {}, el("tr", {}, el("th", {}, level(depth + 1)), el("th", { class: "num" }, L("TPS dikarantina", "Quarantined")),
            el("th", { class: "num" }, RM),
            el("th", {}, L("Keterangan", "Notes")))), el("tbody", {}, rows)))
        : recap ? [] : el("p", { "data-none": "" }, L("Tidak ada anomali di wilayah ini.", "No anomalies in this area.")));
      fill($("downloads"), el("h2", {}, L("Unduh data", "Download the data")), el("ul", { class: "links" },
        el("li", {}, el("a", { href: statusPath(c, codes), "data-kind": "status", type: "application/json" }, "JSON"),
          L(" — status karantina & rekap wilayah ini", " — this area's quarantine and recap status")),
        el("li", {}, el("a", { href: "data.html", "data-kind": "about" }, L("Tentang data ini", "About the data")))));
      $("error").hidden = true;
      body.dataset.state = "ready";
    } catch (err) {
      if (mine !== seq) return;
      $("error").textContent = L("Gagal memuat data (", "Could not load the data (") + err.message + ").";
      $("error").hidden = false;
      body.dataset.state = "error";
    }
    body.dataset.view = [ANOMALIES, c, ...codes].join("/");
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
        $("error").textContent = L("Gagal memuat data (", "Could not load the data (") + err.message + ").";
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
  function setLang(next) {
    lang = next;
    document.documentElement.lang = lang;
    $("lang").textContent = L("English", "Bahasa Indonesia");
    $("lang").setAttribute("lang", L("en", "id"));
    try {
      localStorage.setItem("suara-lang", lang);
    } catch (e) { /* not kept: this visit only */ }
  }
  $("lang").addEventListener("click", () => {
    setLang(lang === "en" ? "id" : "en");
    if (snap) {
      header(route()[0]);
      render();
    }
  });
  if (lang === "en") setLang("en");
  $("history").addEventListener("toggle", (e) => {
    const c = e.target.dataset.contest;
    if (e.target.open && c) {
      get("pemilu/" + c + ".json").then((cands) => history(c, cands))
        .catch(() => fill($("history-chart"), L("Riwayat gagal dimuat.", "The history could not be loaded.")));
    }
  });
  document.addEventListener("visibilitychange", () => document.hidden || poll());
  window.suaraPoll = poll; // lets a test (or a console) check for a new snapshot without waiting 30 s
  setInterval(() => document.hidden || poll(), POLL_MS);
  poll();
})();
