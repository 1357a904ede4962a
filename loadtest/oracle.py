"""What the published site must say, from what the load test sent and tally acknowledged — in plain Python.

For every (TPS, contest) the current form is the highest version tally acknowledged (any stored
outcome: ACCEPTED, QUARANTINED, DUPLICATE or SUPERSEDED says the server holds that version). A
quarantined current form counts as reported-but-flagged: nothing in the totals, not in `progres`.
Whether a form is quarantined is the load test's own knowledge (it made it inconsistent on purpose),
not what tally said; tally's answer is checked against it separately.

Independent of the code under test: it follows docs/domain.md and docs/layout.md, and imports nothing of
services.* — its inputs are the region tree read from the site, the choices, and the forms' numbers
regenerated from their keys (forms.py, plain ints); the sums, percentages and documents are its own.

It is one of two site oracles, for another purpose than tests/publish/oracle.py, which it does not
replace: this one checks a running system from outside at any scale (823,000 TPS), so it keeps a few
bytes per TPS, streams expectations depth first (subtree totals handed between forked processes), and
knows only the numbers — each totals file's chart, table and progres, each sampled TPS file's chart,
administrasi and status flags. It cannot check region lists (the tree it reads is its input) nor
names, status files or photos; tests/publish/oracle.py checks every file whole, at test scale.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Container, Generator, Mapping
from dataclasses import dataclass
from typing import Any

from loadtest.forms import Numbers, Variant, administrasi
from loadtest.registry import ContestRegistry

STORED = frozenset({"ACCEPTED", "QUARANTINED", "DUPLICATE", "SUPERSEDED"})


@dataclass(frozen=True, slots=True)
class Current:
    version: int
    variant: Variant

    @property
    def quarantined(self) -> bool:
        return self.variant == "inconsistent"


class Oracle:
    def __init__(self) -> None:
        self.current: dict[tuple[str, str], Current] = {}
        self._counted: Counter[str] = Counter()  # contest -> TPS whose current form counts

    def acknowledge(self, tps: str, contest: str, version: int, variant: Variant) -> bool:
        """Record a stored form; True when the contest's counted TPS changed (for freshness)."""
        if variant == "malformed":
            raise ValueError("a malformed form is never stored")
        key = (tps, contest)
        before = self.current.get(key)
        if before is not None and before.version >= version:
            return False  # a resend or an older version: the current form stays
        after = Current(version, variant)
        self.current[key] = after
        delta = (not after.quarantined) - (before is not None and not before.quarantined)
        self._counted[contest] += delta
        return delta != 0

    def counted(self, contest: str) -> int:
        return self._counted[contest]


def pct(part: int, whole: int) -> float:
    return round(part * 100 / whole, 2) if whole else 0.0


@dataclass
class AreaTotals:
    votes: list[int]
    reported: int = 0
    total: int = 0


NumbersOf = Callable[[str, Current], Numbers]  # (tps, current form) -> its numbers, as signed
File = tuple[bool, str, dict[str, Any]]  # (a TPS file?, area or TPS code, the parts of its file the oracle knows)


def expected_files(
    registry: ContestRegistry,
    code: str,
    current: dict[tuple[str, str], Current],
    numbers_of: NumbersOf,
    sampled: Container[str],
    known: Mapping[str, AreaTotals] | None = None,
) -> Generator[File, None, AreaTotals]:
    """Every file at and below `code` — each area's totals file, each sampled TPS's file — then the
    totals of `code` (returned), over ALL its TPS (those never sampled count as not reported).

    Depth first, children before their parent, so only the path being walked is in memory: each TPS
    once, then each area from its children. An area in `known` is not walked: its totals are given
    (they were computed elsewhere, e.g. by another process walking that subtree).
    """
    choices = registry.choices
    if known is not None and code in known:
        return known[code]
    kids = registry.children.get(code)
    if kids is None:  # a TPS
        form = current.get((code, registry.contest))
        signed = None if form is None else numbers_of(code, form)
        if code in sampled:
            yield True, code, expected_tps(choices, form, signed)
        if form is None or signed is None or form.quarantined:
            return AreaTotals([0] * len(choices), 0, 1)
        return AreaTotals(signed.votes, 1, 1)
    t = AreaTotals([0] * len(choices))
    table: dict[str, Any] = {}
    for kid in kids:
        k = yield from expected_files(registry, kid, current, numbers_of, sampled, known)
        t.reported += k.reported
        t.total += k.total
        if k.reported:
            t.votes = [a + b for a, b in zip(t.votes, k.votes, strict=True)]
        table[kid] = _row(choices, k)
    yield False, code, expected_area(choices, t, table)
    return t


def _row(choices: tuple[str, ...], t: AreaTotals) -> dict[str, Any]:
    if not t.reported:
        return {"persen": pct(0, t.total), "psu": None, "status_progress": False}
    return {**dict(zip(choices, t.votes, strict=True)), "persen": pct(t.reported, t.total), "psu": None,
            "status_progress": True}  # fmt: skip


def expected_area(choices: tuple[str, ...], t: AreaTotals, table: dict[str, Any]) -> dict[str, Any]:
    """The parts of an area's totals file the oracle knows: chart, table (a row per child), progres."""
    return {
        "chart": {**dict(zip(choices, t.votes, strict=True)), "persen": pct(t.reported, t.total)},
        "table": table,
        "progres": {"progres": t.reported, "total": t.total},
    }


def expected_tps(choices: tuple[str, ...], form: Current | None, signed: Numbers | None) -> dict[str, Any]:
    """The parts of a TPS file the oracle knows: the chart as signed, administrasi and the status flags."""
    if form is None or signed is None:
        return {"chart": None, "administrasi": None, "status_suara": False, "status_adm": False}
    return {
        "chart": {"null": None, **dict(zip(choices, signed.votes, strict=True))},
        "administrasi": administrasi(signed),
        "status_suara": not form.quarantined,
        "status_adm": not form.quarantined,
    }
