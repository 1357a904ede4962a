"""A strict reader of the Sirekap-compatible layout, the way a civic tool that trusts the layout would read it.

Written from the spec (docs/layout.md) and the 53 real Sirekap TPS
files in tests/election/sirekap-tps-samples/, independently of services.publish (nothing here imports it).
Every check raises `LayoutError(path, problem)` on the first deviation: a key too many or too few, a
value of another JSON type (an int where a float is wanted, `true` where a count is wanted — Python's
bool is an int, so that is checked explicitly), a malformed `ts`, a `persen` out of range or with more
than 2 decimals, a code that does not fit where it is.

Where the real files and docs/layout.md disagree, the reader of a single TPS file follows the real files:
40 of the 53 real TPS files have no `"mode"` key, so `check_tps` accepts a file without it unless told
`require_mode=True` (as `check_site` does for suara's own site, whose docs/layout.md promises it).
"""

from __future__ import annotations

import gzip
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

TS_FORMAT = "%Y-%m-%d %H:%M:%S"
_TS = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")  # ASCII digits only
_DIGITS = re.compile(r"[0-9]+")
# Sirekap's ids are numbers ("100025", party numbers); the spec only asks for stable ids, and suara's
# registry names DPR parties "p01"…: a plain token, never "null", "persen" or anything with spaces.
_CHOICE_ID = re.compile(r"[0-9A-Za-z_-]+")
CODE_LENGTHS = (2, 4, 6, 10, 13)
TINGKAT = {2: 1, 4: 2, 6: 3, 10: 4, 13: 5}
# The 18 keys of `administrasi` in every real Sirekap TPS file that has one.
ADMINISTRASI_KEYS = frozenset(
    {
        "suara_sah",
        "suara_tidak_sah",
        "suara_total",
        *(f"{who}_{part}" for who in ("pemilih_dpt", "pengguna_dpt", "pengguna_dptb", "pengguna_non_dpt",
                                       "pengguna_total") for part in ("j", "l", "p")),
    }
)  # fmt: skip
TPS_KEYS = frozenset({"chart", "images", "administrasi", "psu", "ts", "status_suara", "status_adm"})
TOTALS_KEYS = frozenset({"ts", "psu", "mode", "chart", "table", "progres"})
ROW_NO_DATA_KEYS = frozenset({"persen", "psu", "status_progress"})
REGION_KEYS = frozenset({"nama", "id", "kode", "tingkat"})
CANDIDATE_KEYS = frozenset({"nama", "nomor_urut", "warna", "ts"})


class LayoutError(Exception):
    """A published file deviates from the layout: `path` is the file (plus a JSON pointer-ish location)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


# --- parsing ---------------------------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse(body: bytes, path: str) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity."""
    try:
        return json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise LayoutError(path, f"not strict JSON: {exc}") from None


def read(site: Path, path: str) -> Any:
    file = site / path
    if not file.is_file():
        raise LayoutError(path, "missing")
    return parse(file.read_bytes(), path)


# --- values --------------------------------------------------------------------------------------------


def _where(path: str, at: str) -> str:
    return f"{path}#{at}" if at else path


def _dict(path: str, at: str, value: Any, keys: Iterable[str]) -> dict[str, Any]:
    """`value` is an object with exactly `keys`."""
    if type(value) is not dict:
        raise LayoutError(_where(path, at), f"expected an object, got {_kind(value)}")
    wanted = set(keys)
    missing, extra = wanted - value.keys(), value.keys() - wanted
    if missing or extra:
        raise LayoutError(_where(path, at), f"keys: missing {sorted(missing)}, extra {sorted(extra)}")
    return value


def _int(path: str, at: str, value: Any) -> int:
    """A non-negative JSON integer (not a float, not a bool)."""
    if type(value) is not int:
        raise LayoutError(_where(path, at), f"expected an integer, got {_kind(value)}")
    if value < 0:
        raise LayoutError(_where(path, at), f"expected a count, got {value}")
    return value


def _bool(path: str, at: str, value: Any) -> bool:
    if type(value) is not bool:
        raise LayoutError(_where(path, at), f"expected true/false, got {_kind(value)}")
    return value


def _str(path: str, at: str, value: Any) -> str:
    if type(value) is not str or not value:
        raise LayoutError(_where(path, at), f"expected a non-empty string, got {_kind(value)}")
    return value


def _none(path: str, at: str, value: Any) -> None:
    if value is not None:
        raise LayoutError(_where(path, at), f"expected null, got {_kind(value)}")


def _ts(path: str, at: str, value: Any) -> str:
    if type(value) is not str or not _TS.fullmatch(value):
        raise LayoutError(_where(path, at), f"expected 'YYYY-MM-DD HH:MM:SS', got {value!r}")
    try:
        datetime.strptime(value, TS_FORMAT)  # a WIB wall-clock time: only its validity matters
    except ValueError:
        raise LayoutError(_where(path, at), f"not a real date and time: {value!r}") from None
    return value


def _persen(path: str, at: str, value: Any) -> float:
    """A percentage 0..100 with at most 2 decimals (a JSON number: int or float, never a bool)."""
    if type(value) not in (int, float):
        raise LayoutError(_where(path, at), f"expected a number, got {_kind(value)}")
    number = float(value)
    if not math.isfinite(number) or not 0 <= number <= 100:
        raise LayoutError(_where(path, at), f"expected 0..100, got {value!r}")
    if round(number, 2) != number:
        raise LayoutError(_where(path, at), f"more than 2 decimals: {value!r}")
    return number


def _code(path: str, at: str, value: Any, length: int, parent: str) -> str:
    if type(value) is not str or not _DIGITS.fullmatch(value) or len(value) != length:
        raise LayoutError(_where(path, at), f"expected a {length}-digit code, got {value!r}")
    if not value.startswith(parent):
        raise LayoutError(_where(path, at), f"code {value} is not under {parent or 'nasional'}")
    return value


def _kind(value: Any) -> str:
    kinds = {bool: "a bool", int: "an integer", float: "a float", str: "a string", list: "a list", dict: "an object"}
    return "null" if value is None else f"{kinds.get(type(value), type(value).__name__)} {value!r}"[:80]


def child_length(parent: str) -> int:
    """The code length of an area's children: '' → 2, '31' → 4, … '3101011001' → 13."""
    if len(parent) not in (0, *CODE_LENGTHS[:-1]):
        raise ValueError(f"not an area code with children: {parent!r}")
    return CODE_LENGTHS[CODE_LENGTHS.index(len(parent)) + 1] if parent else 2


def persen_of(progres: int, total: int) -> float:
    return round(progres * 100 / total, 2) if total else 0.0


# --- documents -------------------------------------------------------------------------------------------


def check_candidates(doc: Any, path: str, choices: Sequence[str] | None = None) -> list[str]:
    """`pemilu/{c}.json`: `{choice id: {nama, nomor_urut, warna, ts}}`; returns the choice ids in nomor_urut order."""
    if type(doc) is not dict or not doc:
        raise LayoutError(path, f"expected a non-empty object of choices, got {_kind(doc)}")
    numbers: dict[int, str] = {}
    for choice, entry in doc.items():
        if not _CHOICE_ID.fullmatch(choice) or choice in ("null", "persen"):
            raise LayoutError(path, f"choice id {choice!r} is not an id")
        _dict(path, choice, entry, CANDIDATE_KEYS)
        _str(path, f"{choice}/nama", entry["nama"])
        _str(path, f"{choice}/warna", entry["warna"])
        _ts(path, f"{choice}/ts", entry["ts"])
        number = _int(path, f"{choice}/nomor_urut", entry["nomor_urut"])
        if number < 1 or number in numbers:
            raise LayoutError(_where(path, f"{choice}/nomor_urut"), f"nomor_urut {number} is not a new number >= 1")
        numbers[number] = choice
    ids = [numbers[n] for n in sorted(numbers)]
    if choices is not None and set(ids) != set(choices):
        raise LayoutError(path, f"choices {sorted(ids)}, expected {sorted(choices)}")
    return ids


def check_region_list(doc: Any, path: str, parent: str) -> list[str]:
    """`wilayah/pemilu/{c}/…`: the children of `parent` ('' for 0.json); returns their codes."""
    length = child_length(parent)
    if type(doc) is not list:
        raise LayoutError(path, f"expected a list, got {_kind(doc)}")
    codes: list[str] = []
    for i, item in enumerate(doc):
        at = str(i)
        _dict(path, at, item, REGION_KEYS)
        kode = _code(path, f"{at}/kode", item["kode"], length, parent)
        nama = _str(path, f"{at}/nama", item["nama"])
        if _int(path, f"{at}/id", item["id"]) != int(kode):
            raise LayoutError(_where(path, f"{at}/id"), f"id {item['id']} != int(kode {kode})")
        if _int(path, f"{at}/tingkat", item["tingkat"]) != TINGKAT[length]:
            raise LayoutError(_where(path, f"{at}/tingkat"), f"tingkat {item['tingkat']} for a {length}-digit code")
        if length == 13 and nama != f"TPS {kode[10:]}":
            raise LayoutError(_where(path, f"{at}/nama"), f"a TPS is named 'TPS {kode[10:]}', got {nama!r}")
        if kode in codes:
            raise LayoutError(_where(path, f"{at}/kode"), f"{kode} listed twice")
        codes.append(kode)
    return codes


@dataclass(frozen=True)
class Totals:
    votes: dict[str, int]
    persen: float
    progres: int
    total: int
    rows: dict[str, dict[str, Any]]


def check_totals(doc: Any, path: str, choices: Sequence[str], children: Sequence[str]) -> Totals:
    """`pemilu/hhcw/{c}…json`: one area's totals; `children` are the codes its region list names."""
    _dict(path, "", doc, TOTALS_KEYS)
    _ts(path, "ts", doc["ts"])
    _none(path, "psu", doc["psu"])
    if doc["mode"] != "hhcw" or type(doc["mode"]) is not str:
        raise LayoutError(_where(path, "mode"), f"expected 'hhcw', got {_kind(doc['mode'])}")
    chart = _dict(path, "chart", doc["chart"], [*choices, "persen"])
    votes = {c: _int(path, f"chart/{c}", chart[c]) for c in choices}
    progres = _dict(path, "progres", doc["progres"], ["progres", "total"])
    counted, total = _int(path, "progres/progres", progres["progres"]), _int(path, "progres/total", progres["total"])
    if counted > total:
        raise LayoutError(_where(path, "progres"), f"progres {counted} > total {total}")
    persen = _persen(path, "chart/persen", chart["persen"])
    if persen != persen_of(counted, total):
        raise LayoutError(
            _where(path, "chart/persen"), f"{persen} is not {counted}/{total} TPS = {persen_of(counted, total)}"
        )
    table = doc["table"]
    if type(table) is not dict:
        raise LayoutError(_where(path, "table"), f"expected an object, got {_kind(table)}")
    if set(table) != set(children):
        raise LayoutError(
            _where(path, "table"),
            f"children: missing {sorted(set(children) - set(table))}, extra {sorted(set(table) - set(children))}",
        )
    rows: dict[str, dict[str, Any]] = {}
    for child, row in table.items():
        at = f"table/{child}"
        if type(row) is dict and row.keys() == ROW_NO_DATA_KEYS:
            if _bool(path, f"{at}/status_progress", row["status_progress"]):
                raise LayoutError(_where(path, at), "a row without votes has status_progress false")
        else:
            _dict(path, at, row, [*choices, *ROW_NO_DATA_KEYS])
            for c in choices:
                _int(path, f"{at}/{c}", row[c])
            if not _bool(path, f"{at}/status_progress", row["status_progress"]):
                raise LayoutError(_where(path, at), "a row with votes has status_progress true")
        _persen(path, f"{at}/persen", row["persen"])
        _none(path, f"{at}/psu", row["psu"])
        rows[child] = row
    return Totals(votes, persen, counted, total, rows)


@dataclass(frozen=True)
class Tps:
    votes: dict[str, int] | None
    counted: bool  # status_suara: the form counts in the totals
    has_data: bool


def check_tps(doc: Any, path: str, choices: Sequence[str], *, require_mode: bool = False) -> Tps:
    """`pemilu/hhcw/{c}/{2}/{4}/{6}/{10}/{13}.json`: one TPS, as the real Sirekap files are."""
    if type(doc) is not dict:
        raise LayoutError(path, f"expected an object, got {_kind(doc)}")
    _dict(path, "", doc, TPS_KEYS | ({"mode"} if require_mode or "mode" in doc else set()))
    if "mode" in doc and (type(doc["mode"]) is not str or doc["mode"] != "hhcw"):
        raise LayoutError(_where(path, "mode"), f"expected 'hhcw', got {_kind(doc['mode'])}")
    votes: dict[str, int] | None = None
    if doc["chart"] is not None:
        chart = _dict(path, "chart", doc["chart"], ["null", *choices])
        _none(path, "chart/null", chart["null"])
        votes = {c: _int(path, f"chart/{c}", chart[c]) for c in choices}
    images = doc["images"]
    if type(images) is not list or len(images) != 3:
        raise LayoutError(_where(path, "images"), f"expected a list of 3, got {_kind(images)}")
    for i, image in enumerate(images):
        if image is not None:
            _str(path, f"images/{i}", image)
    if doc["administrasi"] is not None:
        admin = _dict(path, "administrasi", doc["administrasi"], ADMINISTRASI_KEYS)
        for key, value in admin.items():
            _int(path, f"administrasi/{key}", value)
    _none(path, "psu", doc["psu"])
    _ts(path, "ts", doc["ts"])
    status_suara = _bool(path, "status_suara", doc["status_suara"])
    status_adm = _bool(path, "status_adm", doc["status_adm"])
    if status_suara and votes is None:
        raise LayoutError(_where(path, "status_suara"), "true without a chart")
    if status_adm and doc["administrasi"] is None:
        raise LayoutError(_where(path, "status_adm"), "true without administrasi")
    has_data = votes is not None or doc["administrasi"] is not None
    return Tps(votes, status_suara, has_data)


# --- the whole tree of one contest --------------------------------------------------------------------------


@dataclass
class SiteReport:
    contest: str
    areas: int = 0
    tps: int = 0
    tps_counted: int = 0
    tps_without_data: int = 0
    tps_not_counted: int = 0  # a form is shown but counts nowhere (quarantined)
    files: set[str] = field(default_factory=set)


def nest(code: str) -> str:
    return "/".join(code[:n] for n in CODE_LENGTHS if n <= len(code))


def _read_checked(site: Path, path: str, report: SiteReport) -> Any:
    """The file's JSON, after checking its `.gz` sibling holds the same bytes."""
    file = site / path
    if not file.is_file():
        raise LayoutError(path, "missing")
    body = file.read_bytes()
    gz = site / (path + ".gz")
    if not gz.is_file():
        raise LayoutError(path + ".gz", "missing (every .json has a .json.gz beside it)")
    try:
        unzipped = gzip.decompress(gz.read_bytes())
    except (OSError, EOFError) as exc:
        raise LayoutError(path + ".gz", f"not gzip: {exc}") from None
    if unzipped != body:
        raise LayoutError(path + ".gz", "does not decompress to the file beside it")
    report.files.add(path)
    return parse(body, path)


def check_site(site: Path, contest: str, *, strays: bool = True) -> SiteReport:
    """Walk one contest's tree from `wilayah/pemilu/{c}/0.json` down and check every file.

    Every area a region list names must have its region list and totals file (table keys = the listed
    children), every listed TPS its TPS file; each parent's chart and progres must be the sum of its
    children's (the rows of its table and the children's own files agree), and a desa's the sum of its
    counted TPS files. With `strays`, no file under `pemilu/hhcw/{c}/` or `wilayah/pemilu/{c}/` may be
    left that the walk did not reach.
    """
    report = SiteReport(contest)
    choices = check_candidates(_read_checked(site, f"pemilu/{contest}.json", report), f"pemilu/{contest}.json")
    _area(site, contest, "", choices, report)
    if strays:
        for top in (f"pemilu/hhcw/{contest}", f"wilayah/pemilu/{contest}"):
            for file in sorted((site / top).rglob("*.json")):
                rel = file.relative_to(site).as_posix()
                if rel not in report.files:
                    raise LayoutError(rel, "a file no region list leads to")
    return report


def _area(site: Path, contest: str, area: str, choices: Sequence[str], report: SiteReport) -> Totals:
    region_path = f"wilayah/pemilu/{contest}/{nest(area)}.json" if area else f"wilayah/pemilu/{contest}/0.json"
    totals_path = f"pemilu/hhcw/{contest}/{nest(area)}.json" if area else f"pemilu/hhcw/{contest}.json"
    children = check_region_list(_read_checked(site, region_path, report), region_path, area)
    totals = check_totals(_read_checked(site, totals_path, report), totals_path, choices, children)
    report.areas += 1
    sums = {c: 0 for c in choices}
    counted = total = 0
    for child in children:
        if len(child) == 13:
            path = f"pemilu/hhcw/{contest}/{nest(child)}.json"
            tps = check_tps(_read_checked(site, path, report), path, choices, require_mode=True)
            report.tps += 1
            report.tps_counted += tps.counted
            report.tps_without_data += not tps.has_data
            report.tps_not_counted += tps.has_data and not tps.counted
            child_votes = tps.votes if tps.counted and tps.votes is not None else None
            child_counted, child_total = int(tps.counted), 1
        else:
            sub = _area(site, contest, child, choices, report)
            child_votes = sub.votes if sub.progres else None
            child_counted, child_total = sub.progres, sub.total
        _same_row(totals_path, child, totals.rows[child], child_votes, persen_of(child_counted, child_total), choices)
        counted += child_counted
        total += child_total
        if child_votes is not None:
            for c in choices:
                sums[c] += child_votes[c]
    if (totals.progres, totals.total) != (counted, total):
        raise LayoutError(_where(totals_path, "progres"),
                          f"{totals.progres}/{totals.total}, its children sum to {counted}/{total}")  # fmt: skip
    if totals.votes != sums:
        raise LayoutError(_where(totals_path, "chart"), f"{totals.votes}, its children sum to {sums}")
    return totals


def _same_row(
    path: str,
    child: str,
    row: Mapping[str, Any],
    votes: Mapping[str, int] | None,
    persen: float,
    choices: Sequence[str],
) -> None:
    """A parent's table row of `child` says what the child's own file says."""
    at = f"table/{child}"
    if row["persen"] != persen:
        raise LayoutError(_where(path, f"{at}/persen"), f"{row['persen']}, the child's own file says {persen}")
    if votes is None:
        if row.keys() != ROW_NO_DATA_KEYS:
            raise LayoutError(_where(path, at), "votes shown for a child without counted TPS")
    elif row.keys() == ROW_NO_DATA_KEYS or any(row[c] != votes[c] for c in choices):
        raise LayoutError(_where(path, at), f"{dict(row)}, the child's own file says {dict(votes)}")
