"use strict";
// The anomalies page's recap against the units its digital count sums (suara/rekap/…, docs/layout.md):
// each TPS (or area) with its digital number of every field that differs, their sum (the digital count)
// and the recap. Which unit is wrong only its paper says: each links to its form (or its own anomalies).
// app.js loads this file only where a recap differs, so the page's first load stays small.
window.suaraRekap = function ({ el, L, fmt, numero, hashOf, level, RECON }, c, codes, cands, recap, path) {
  const fields = (recap.differences || []).map((d) => d.field);
  const label = (f) => String(f).replace(/^votes\[(\d+)\]$/, (_, id) => (cands[id] ? numero(cands[id]) + " " + cands[id].nama : id));
  const tps = recap.unit === "tps";
  const units = recap.units || [];
  const counted = units.filter((u) => (tps ? u.status === "dihitung" : true)).length;
  const STATUS = { dihitung: ["dihitung", "counted"], karantina: ["dikarantina", "quarantined"], kosong: ["belum ada formulir", "no form yet"] };
  const rows = units.map((u) => el("tr", { "data-unit": u.kode, "data-status": u.status || "" },
    el("td", { class: "name" }, el("a", { href: hashOf(c, [...codes, ...(tps ? [u.kode.slice(0, 10), u.kode] : [u.kode])], !tps) }, u.nama || u.kode)),
    el("td", { "data-label": L("Status", "Status") }, tps ? L(...(STATUS[u.status] || [u.status, u.status]))
      : (RECON[u.reconciliation] ? L("Rekap: ", "Recap: ") + L(...RECON[u.reconciliation]) : "")),
    fields.map((f) => el("td", { class: "num", "data-label": label(f), "data-field": f }, fmt(u.digital[f]),
      u.signed && u.status !== "dihitung" ? el("span", { class: "muted" }, " (" + L("formulir: ", "form: ") + fmt(u.signed[f]) + ")") : []))));
  const sum = (name, key, attrs) => el("tr", attrs, el("th", { scope: "row" }, name), el("td", {}),
    fields.map((f) => el("td", { class: "num", "data-label": label(f), "data-field": f }, fmt(recap[key][f]))));
  return [
    el("h2", {}, L("Rekap dan unit yang dijumlahkan", "The recap and the units summed")),
    el("p", { "data-recap-summary": "" }, tps
      ? L(`Jumlah digital ${fmt(counted)} TPS yang dihitung di bawah ini berbeda dengan rekap (D.Hasil) pada ${fields.length} isian. ` +
          "TPS yang dikarantina atau belum ada formulirnya tidak ikut dijumlahkan. Periksa foto formulir tiap TPS terhadap kertasnya.",
          `The digital sum of the ${fmt(counted)} counted polling stations below differs from the recap (D.Hasil) in ${fields.length} field(s). ` +
          "Quarantined stations, and those without a form, are not in the sum. Check each station's form photo against its paper.")
      : L(`Jumlah digital ${fmt(units.length)} wilayah di bawah ini berbeda dengan rekap pada ${fields.length} isian.`,
          `The digital sum of the ${fmt(units.length)} areas below differs from the recap in ${fields.length} field(s).`)),
    el("div", { class: "scroll" }, el("table", { class: "areas recap-units" },
      el("thead", {}, el("tr", {}, el("th", {}, tps ? "TPS" : level(codes.length + 1)), el("th", {}, L("Status", "Status")),
        fields.map((f) => el("th", { class: "num" }, label(f))))),
      el("tbody", {}, rows),
      el("tfoot", {}, sum(L("Jumlah digital", "Digital sum"), "digital", { "data-sum": "digital" }),
        sum(L("Rekap (D.Hasil)", "Recap (D.Hasil)"), "recap", { "data-sum": "recap" })))),
    el("p", {}, el("a", { href: path, "data-kind": "recap", type: "application/json" }, "JSON"),
      L(" — rekap ini dan unit yang dijumlahkannya", " — this recap and the units it sums")),
  ];
};
