"""A small but complete published site (docs/layout.md), written by hand for the page and server tests.

Stand-in until the real pipeline (tally → aggregate → publish) can build the site: only
`build_sample_site` and the fields of `SampleSite` are the tests' interface; the body may be
replaced. The expected numbers are summed straight from the TPS inputs, not read back from the
files this module writes, so the tests have an oracle independent of the aggregation below.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SITE_SOURCE = Path(__file__).resolve().parents[2] / "services" / "publish" / "site"
CONTEST = "ppwp"
TS = "2024-02-16 16:25:10"
CANDIDATES = {
    "100025": ("H. ANIES RASYID BASWEDAN, Ph.D. - Dr. (H.C.) H. A. MUHAIMIN ISKANDAR", 1, "#8978e5"),
    "100026": ("H. PRABOWO SUBIANTO - GIBRAN RAKABUMING RAKA", 2, "#63d0ef"),
    "100027": ("H. GANJAR PRANOWO, S.H., M.I.P. - Prof. Dr. H. M. MAHFUD MD", 3, "#eb1c24"),
}
AREAS = {
    "31": "DKI JAKARTA",
    "3101": "KAB. ADM. KEPULAUAN SERIBU",
    "310101": "KEPULAUAN SERIBU SELATAN",
    "3101011001": "PULAU TIDUNG",
    "3101011002": "PULAU PARI",
    "310102": "KEPULAUAN SERIBU UTARA",
    "3101021001": "PULAU KELAPA",
    "3171": "KOTA ADM. JAKARTA SELATAN",
    "317101": "TEBET",
    "3171011001": "TEBET TIMUR",
    "32": "JAWA BARAT",
    "3201": "BOGOR",
    "320101": "CIBINONG",
    "3201011001": "PONDOK RAJEG",
    "3201011002": "HARAPAN JAYA",
}
# A 16×12 JPEG (drawn on a canvas in chromium, quality 0.5): the smallest real photo a browser decodes.
PHOTO_JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDABALDA4MChAODQ4SERATGCgaGBYWGDEjJR0oOjM9PDkzODdASFxOQERXRTc4UG1RV19i"
    "Z2hnPk1xeXBkeFxlZ2P/2wBDARESEhgVGC8aGi9jQjhCY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2Nj"
    "Y2NjY2NjY2P/wAARCAAMABADASIAAhEBAxEB/8QAFgABAQEAAAAAAAAAAAAAAAAABAMG/8QAIRAAAQQCAgIDAAAAAAAAAAAAAwEC"
    "BBEABRIhE0ExUWH/xAAVAQEBAAAAAAAAAAAAAAAAAAABA//EABsRAAICAwEAAAAAAAAAAAAAAAERAAIDEiFx/9oADAMBAAIRAxEA"
    "PwDRbI2wZPI0G2hRxpVDK5qOb0nzaZXWs27zjMefGkRVu/FS8ulTpUb9/uKk6bXyzuOePzI6rXm5LpK9Lio0cUQDQAZwG26S1WrW"
    "/eJrRMEuUGWy1IC87P/Z"
)


@dataclass(frozen=True)
class Tps:
    code: str
    votes: dict[str, int] | None  # None: no form yet
    administrasi: dict[str, int] | None
    quarantined: bool = False
    failed_checks: tuple[str, ...] = ()
    photo: bool = False


@dataclass(frozen=True)
class SampleSite:
    site_dir: Path
    contest: str
    choices: tuple[str, ...]
    expected_votes: dict[str, int]  # national, per choice
    expected_progres: int  # TPS whose form counts
    expected_total: int  # all TPS
    tps_path: tuple[str, ...]  # province … TPS codes down to a TPS with a counted form and a photo
    tps_votes: dict[str, int]
    tps_administrasi: dict[str, int]
    quarantined_tps: str
    mismatch_kecamatan: str
    no_data_tps: str


def _administrasi(votes: dict[str, int], invalid: int, dpt: tuple[int, int], dptb: int, dpk: int) -> dict[str, int]:
    """A form whose numbers all agree (docs/domain.md's checks), from the votes and a few voter counts."""
    valid = sum(votes.values())
    total = valid + invalid
    adm = {"suara_sah": valid, "suara_tidak_sah": invalid, "suara_total": total}
    groups = {
        "pemilih_dpt": (dpt[0], dpt[1]),
        "pengguna_dptb": (dptb // 2, dptb - dptb // 2),
        "pengguna_non_dpt": (dpk // 2, dpk - dpk // 2),
    }
    users_dpt = total - dptb - dpk
    groups["pengguna_dpt"] = (users_dpt // 2, users_dpt - users_dpt // 2)
    parts = [groups[g] for g in ("pengguna_dpt", "pengguna_dptb", "pengguna_non_dpt")]
    groups["pengguna_total"] = (sum(l for l, _ in parts), sum(p for _, p in parts))
    for name, (l, p) in groups.items():
        adm |= {f"{name}_j": l + p, f"{name}_l": l, f"{name}_p": p}
    return adm


def _form(a: int, b: int, c: int, invalid: int = 3) -> tuple[dict[str, int], dict[str, int]]:
    votes = {"100025": a, "100026": b, "100027": c}
    return votes, _administrasi(votes, invalid, (150, 148), dptb=2, dpk=1)


def _tps_inputs() -> list[Tps]:
    bad_votes, bad_adm = _form(40, 50, 20)
    bad_adm = bad_adm | {"suara_sah": 120}  # sum of choices (110) ≠ suara_sah: quarantined
    return [
        Tps("3101011001001", *_form(83, 107, 38, 5), photo=True),
        Tps("3101011001002", *_form(92, 126, 30, 7)),
        Tps("3101011001003", bad_votes, bad_adm, quarantined=True, failed_checks=("jumlah suara paslon ≠ suara sah",)),
        Tps("3101011001004", None, None),
        Tps("3101011002001", *_form(61, 88, 44)),
        Tps("3101021001001", *_form(70, 71, 72, 0)),
        Tps("3101021001002", *_form(1234, 2345, 345, 11)),
        Tps("3171011001001", None, None),
        Tps("3201011001001", *_form(120, 95, 60, 4)),
        Tps("3201011001002", *_form(101, 99, 50, 2)),
        Tps("3201011002001", *_form(55, 66, 77, 1)),
    ]


def _parent(code: str) -> str:
    return {2: "", 4: code[:2], 6: code[:4], 10: code[:6], 13: code[:10]}[len(code)]


def _write(site: Path, rel: str, body: bytes) -> None:
    path = site / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    if rel.endswith((".json", ".html", ".css", ".js")):
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(body, compresslevel=9, mtime=0))


def _json(site: Path, rel: str, value: object) -> None:
    _write(site, rel, json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def build_sample_site(site_dir: Path) -> SampleSite:
    site_dir.mkdir(parents=True, exist_ok=True)
    for src in SITE_SOURCE.iterdir():
        if src.is_file():
            _write(site_dir, src.name, src.read_bytes())
    tps_list = _tps_inputs()
    c = CONTEST
    choices = tuple(CANDIDATES)
    children: dict[str, list[str]] = {}
    for code in [*AREAS, *(t.code for t in tps_list)]:
        children.setdefault(_parent(code), []).append(code)

    def under(area: str) -> list[Tps]:
        return [t for t in tps_list if t.code.startswith(area)]

    def counted(ts: list[Tps]) -> list[Tps]:
        return [t for t in ts if t.votes is not None and not t.quarantined]

    def summary(area: str) -> dict[str, Any]:
        ts = under(area)
        ok = counted(ts)
        persen = round(len(ok) * 100 / len(ts), 2) if ts else 0.0
        votes = {ch: sum(t.votes[ch] for t in ok if t.votes) for ch in choices}
        return {"votes": votes, "persen": persen, "progres": len(ok), "total": len(ts), "counted": bool(ok)}

    # Reconciliation per area where a manual recap is entered (kecamatan, kab/kota, province).
    recon: dict[str, dict[str, Any]] = {
        "310101": {
            "status": "MISMATCH",
            "recap_version": 2,
            "differences": [{"field": "votes[100025]", "recap": 246, "digital": 236, "difference": 10}],
        },
        "310102": {"status": "MATCH", "recap_version": 1, "differences": []},
        "3101": {"status": "INCOMPLETE", "recap_version": 1, "differences": []},
    }

    _json(
        site_dir,
        f"pemilu/{c}.json",
        {k: {"nama": n, "nomor_urut": u, "warna": w, "ts": TS} for k, (n, u, w) in CANDIDATES.items()},
    )
    photos: dict[str, str] = {}
    for t in tps_list:
        if t.photo:
            digest = hashlib.sha256(PHOTO_JPEG).hexdigest()
            photos[t.code] = f"/foto/{digest[:2]}/{digest}.jpg"
            _write(site_dir, photos[t.code].lstrip("/"), PHOTO_JPEG)

    for area in ["", *AREAS]:
        rel = "/".join(area[:n] for n in (2, 4, 6, 10) if n <= len(area))
        kids = children[area]
        tingkat = len(rel.split("/")) + 1 if area else 1
        _json(
            site_dir,
            f"wilayah/pemilu/{c}/{rel or '0'}.json",
            [{"nama": AREAS.get(k) or f"TPS {k[-3:]}", "id": int(k), "kode": k, "tingkat": tingkat} for k in kids],
        )
        s = summary(area)
        table: dict[str, Any] = {}
        for k in kids:
            ks = summary(k)
            row: dict[str, Any] = dict(ks["votes"]) if ks["counted"] else {}
            table[k] = row | {"persen": ks["persen"], "psu": None, "status_progress": ks["counted"]}
        totals = {
            "ts": TS,
            "psu": None,
            "mode": "hhcw",
            "chart": s["votes"] | {"persen": s["persen"]},
            "table": table,
            "progres": {"progres": s["progres"], "total": s["total"]},
        }
        _json(site_dir, f"pemilu/hhcw/{c}/{rel}.json" if area else f"pemilu/hhcw/{c}.json", totals)

        def flags(k: str) -> dict[str, Any]:
            q = sum(t.quarantined for t in under(k))
            entry: dict[str, Any] = {"tps_quarantined": q} if q else {}
            if len(k) == 13 and q:
                entry["failed_checks"] = list(next(t for t in tps_list if t.code == k).failed_checks)
            if k in recon and recon[k]["status"] != "NO_RECAP":
                entry["reconciliation"] = recon[k]["status"]
            return entry

        status = {
            "kode": area or c,
            "ts": TS,
            "tps_quarantined": sum(t.quarantined for t in under(area)),
            "reconciliation": recon.get(area, {"status": "NO_RECAP", "recap_version": None, "differences": []})
            if len(area) in (2, 4, 6)
            else None,
            "children": {k: f for k in kids if (f := flags(k))},
        }
        _json(site_dir, f"suara/status/{c}/{rel}.json" if area else f"suara/status/{c}.json", status)

    for t in tps_list:
        rel = "/".join(t.code[:n] for n in (2, 4, 6, 10, 13))
        ok = t.votes is not None and not t.quarantined
        _json(
            site_dir,
            f"pemilu/hhcw/{c}/{rel}.json",
            {
                "mode": "hhcw",
                "chart": {"null": None, **t.votes} if t.votes else None,
                "images": [photos.get(t.code), None, None],
                "administrasi": t.administrasi,
                "psu": None,
                "ts": TS,
                "status_suara": ok,
                "status_adm": ok,
            },
        )

    national = summary("")
    _json(
        site_dir,
        "suara/snapshot.json",
        {
            "snapshot": 42,
            "ts": TS,
            "generated_at": "2024-02-16T09:25:10.123Z",
            "aggregate_sequence": 1234,
            "caught_up": True,
            "chain_head": {"position": 5678, "hash": hashlib.sha256(b"sample chain head").hexdigest()},
            "contests": {
                c: {
                    "progres": national["progres"],
                    "total": national["total"],
                    "quarantined": sum(t.quarantined for t in tps_list),
                    "persen": national["persen"],
                }
            },
        },
    )

    # The history (docs/layout.md): the contest's list, rewritten every snapshot, and one entry, never.
    _json(site_dir, f"suara/riwayat/{c}.json", [{"snapshot": 42, "ts": TS}])
    _json(site_dir, f"suara/riwayat/{c}/42.json", {"snapshot": 42, "ts": TS, "contest": c})

    # The oracle: a flat sum over the TPS inputs, not the per-area aggregation above.
    expected = dict.fromkeys(choices, 0)
    progres = 0
    for t in tps_list:
        if t.votes is not None and not t.quarantined:
            progres += 1
            for ch, v in t.votes.items():
                expected[ch] += v
    target = next(t for t in tps_list if t.photo)
    assert target.votes is not None and target.administrasi is not None
    return SampleSite(
        site_dir=site_dir,
        contest=c,
        choices=choices,
        expected_votes=expected,
        expected_progres=progres,
        expected_total=len(tps_list),
        tps_path=tuple(target.code[:n] for n in (2, 4, 6, 10, 13)),
        tps_votes=dict(target.votes),
        tps_administrasi=dict(target.administrasi),
        quarantined_tps=next(t.code for t in tps_list if t.quarantined),
        mismatch_kecamatan="310101",
        no_data_tps=next(t.code for t in tps_list if t.votes is None),
    )
