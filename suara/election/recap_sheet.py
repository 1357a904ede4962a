"""The recap official's sheet (D.Hasil): the units of an area, their digital numbers and the paper's.

A PPK recaps a kecamatan from its TPS; a KPU kabupaten/kota from its kecamatan; a KPU province from
its kabupaten/kota. Those are the sheet's *units*. For each, the sheet holds what the digital count
said when the official last fetched it and what was read out in the plenary (the paper). The recap
the official signs is the sum of the paper over every unit: the digital numbers only show where the
two differ. Counts are keyed by aggregate's field names ("votes[<choice id>]", "suara_sah", …), the
names its reconciliation reports differences under.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from suara.v1 import aggregate_pb2

SCALARS = ("suara_sah", "suara_tidak_sah", "suara_total", "dpt", "pengguna")
# What each scalar is on the paper, for prompts and messages.
LABELS = {
    "suara_sah": "suara sah (valid ballots)",
    "suara_tidak_sah": "suara tidak sah (invalid ballots)",
    "suara_total": "suara total (all ballots cast)",
    "dpt": "pemilih DPT (registered voters)",
    "pengguna": "pengguna hak pilih (voters who voted)",
}
MAX_COUNT = 10**9  # aggregate's bound on every recap count

Counts = dict[str, int]


def vote_field(choice: str) -> str:
    return f"votes[{choice}]"


@dataclass(frozen=True)
class Choice:
    id: str
    name: str
    number: int  # nomor urut


@dataclass
class Unit:
    """One row of the sheet: a TPS (for a kecamatan) or a child area, with its digital numbers."""

    code: str
    name: str
    digital: Counts | None  # None: no counted form yet (a TPS without one, or quarantined)
    tps_total: int = 1
    tps_reported: int = 0
    tps_quarantined: int = 0

    @property
    def complete(self) -> bool:
        return self.tps_reported == self.tps_total


@dataclass
class Snapshot:
    """What `suara recap fetch` keeps: the area's units as the published site had them."""

    area: str
    contest: str
    name: str
    choices: list[Choice]
    units: list[Unit]
    source: str  # where it was read (the site's URL or directory)
    fetched_at: str  # RFC 3339, UTC
    site_snapshot: int | None = None  # the site's snapshot number, when it had one
    site_ts: str = ""
    reconciliation: dict[str, Any] | None = None  # the site's status of this area's recap at fetch time

    @property
    def fields(self) -> list[str]:
        return [vote_field(c.id) for c in self.choices] + list(SCALARS)

    def unit(self, code: str) -> Unit | None:
        return next((u for u in self.units if u.code == code), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "suara-recap-snapshot",
            "area": self.area,
            "contest": self.contest,
            "name": self.name,
            "source": self.source,
            "fetched_at": self.fetched_at,
            "site_snapshot": self.site_snapshot,
            "site_ts": self.site_ts,
            "choices": [{"id": c.id, "nama": c.name, "nomor_urut": c.number} for c in self.choices],
            "units": [vars(u) for u in self.units],
            "reconciliation": self.reconciliation,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Snapshot:
        if data.get("format") != "suara-recap-snapshot":
            raise ValueError("not a snapshot written by `suara recap fetch`")
        return cls(
            area=data["area"],
            contest=data["contest"],
            name=data["name"],
            choices=[Choice(c["id"], c["nama"], c["nomor_urut"]) for c in data["choices"]],
            units=[Unit(**u) for u in data["units"]],
            source=data["source"],
            fetched_at=data["fetched_at"],
            site_snapshot=data.get("site_snapshot"),
            site_ts=data.get("site_ts", ""),
            reconciliation=data.get("reconciliation"),
        )


class PaperError(ValueError):
    """Numbers that cannot be taken as read out; `problems` names each bad field as '<unit>.<field>'."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def parse_count(text: str) -> int:
    """A count as an official types it: digits, with dots, commas or spaces as thousands separators."""
    cleaned = text.strip().replace(".", "").replace(",", "").replace(" ", "")
    if not cleaned:
        raise ValueError("empty (write 0 where the paper has none)")
    if not cleaned.isascii() or not cleaned.isdigit():
        raise ValueError(f"{text.strip()!r} is not a whole number")
    value = int(cleaned)
    if value > MAX_COUNT:
        raise ValueError(f"{value:,} is more than {MAX_COUNT:,}: a typo?")
    return value


_NOT_COUNTS = frozenset({"kode", "nama"})  # a sheet template's columns that are not counts


def _column_field(column: str, choices: Sequence[Choice]) -> str | None:
    """The field a column header names: a scalar, a choice id, "votes[id]", or a choice's nomor urut."""
    name = column.strip()
    if name in SCALARS:
        return name
    for c in choices:
        if name in (c.id, vote_field(c.id), f"no{c.number}", str(c.number)):
            return vote_field(c.id)
    return None


def read_paper(text: str, snapshot: Snapshot) -> dict[str, Counts]:
    """Numbers per unit from a CSV (header `kode`, then a column per field) or a JSON object
    {code: {field: count}}. Every unit named must be of the sheet and every field given; every problem
    is reported at once, named '<code>.<field>'."""
    stripped = text.lstrip()
    rows: list[tuple[str, dict[str, str]]] = []
    problems: list[str] = []
    if stripped.startswith("{"):
        data = json.loads(text)
        for code, values in data.items():
            if not isinstance(values, dict):
                problems.append(f"{code}: expected an object of counts")
                continue
            rows.append((code, {str(k): str(v) for k, v in values.items() if k not in _NOT_COUNTS}))
    else:
        reader = csv.DictReader(io.StringIO(text))
        header = [h.strip() for h in reader.fieldnames or []]
        if "kode" not in header:
            raise PaperError(["header: the first line must name the columns, starting with `kode`"])
        for line, record in enumerate(reader, start=2):
            code = (record.get("kode") or "").strip()
            if not code:
                problems.append(f"line {line}: no kode")
                continue
            values = {k.strip(): (v or "") for k, v in record.items() if k is not None}
            rows.append((code, {k: v for k, v in values.items() if k not in _NOT_COUNTS}))
    wanted = snapshot.fields
    result: dict[str, Counts] = {}
    for code, values in rows:
        if code in result:
            problems.append(f"{code}: given twice; keep the line read out in the plenary")
            continue
        if snapshot.unit(code) is None:
            problems.append(f"{code}: not a unit of {snapshot.area} (see `suara recap show`)")
            continue
        counts: Counts = {}
        for column, raw in values.items():
            name = _column_field(column, snapshot.choices)
            if name is None:
                problems.append(f"{code}.{column}: unknown column (choices are named by id or nomor urut)")
                continue
            try:
                counts[name] = parse_count(raw)
            except ValueError as exc:
                problems.append(f"{code}.{name}: {exc}")
        missing = [f for f in wanted if f not in counts]
        problems += [f"{code}.{f}: missing" for f in missing if not any(p.startswith(f"{code}.{f}:") for p in problems)]
        result[code] = counts
    if problems:
        raise PaperError(problems)
    return result


def warnings(counts: Counts, choices: Sequence[Choice]) -> list[str]:
    """How a unit's paper numbers fail to add up, as the form's checks would say: worth a second look in
    the plenary, but the recap records what was read out."""
    said: list[str] = []
    votes = sum(counts.get(vote_field(c.id), 0) for c in choices)
    if votes != counts.get("suara_sah"):
        said.append(f"the votes add up to {votes:,}, suara_sah says {counts.get('suara_sah', 0):,}")
    if counts.get("suara_sah", 0) + counts.get("suara_tidak_sah", 0) != counts.get("suara_total"):
        said.append("suara_sah + suara_tidak_sah is not suara_total")
    if counts.get("suara_total", 0) > counts.get("pengguna", 0):
        said.append("suara_total is more than pengguna")
    return said


@dataclass(frozen=True)
class Difference:
    field: str
    paper: int
    digital: int

    @property
    def difference(self) -> int:
        return self.paper - self.digital


@dataclass
class Comparison:
    """The sheet compiled: the recap (the paper summed), and where paper and digital differ."""

    recap: Counts | None  # None while some unit has no paper numbers
    digital: Counts
    missing_paper: list[str]  # units without paper numbers
    differences: dict[str, list[Difference]] = field(default_factory=dict)  # unit -> where it differs
    no_digital: list[str] = field(default_factory=list)  # units with paper but no counted digital form
    incomplete: list[str] = field(default_factory=list)  # child areas not every TPS of which is counted


def add(total: Counts, counts: Mapping[str, int]) -> None:
    for name, value in counts.items():
        total[name] = total.get(name, 0) + value


def compile_sheet(snapshot: Snapshot, paper: Mapping[str, Counts]) -> Comparison:
    fields = snapshot.fields
    digital: Counts = dict.fromkeys(fields, 0)
    recap: Counts = dict.fromkeys(fields, 0)
    comparison = Comparison(None, digital, [])
    for unit in snapshot.units:
        if unit.digital is not None:
            add(digital, unit.digital)
        if unit.tps_total > 1 and not unit.complete:
            comparison.incomplete.append(unit.code)
        read = paper.get(unit.code)
        if read is None:
            comparison.missing_paper.append(unit.code)
            continue
        add(recap, read)
        if unit.digital is None:
            comparison.no_digital.append(unit.code)
            continue
        diffs = [Difference(f, read.get(f, 0), unit.digital.get(f, 0)) for f in fields]
        if differing := [d for d in diffs if d.difference]:
            comparison.differences[unit.code] = differing
    if not comparison.missing_paper:
        comparison.recap = recap
    return comparison


def to_totals(counts: Mapping[str, int], choices: Iterable[Choice]) -> aggregate_pb2.Totals:
    totals = aggregate_pb2.Totals(votes={c.id: counts.get(vote_field(c.id), 0) for c in choices})
    for name in SCALARS:
        setattr(totals, name, counts.get(name, 0))
    return totals


def from_totals(totals: aggregate_pb2.Totals) -> Counts:
    counts = {vote_field(c): v for c, v in sorted(totals.votes.items())}
    counts.update({name: getattr(totals, name) for name in SCALARS})
    return counts
