"""What the published site must say, from what the load test sent and tally acknowledged — in plain Python.

Independent of tests/publish/oracle.py and of services.*: it follows design.md and LAYOUT.md.
For every (TPS, contest) the current form is the highest version tally acknowledged (any stored
outcome: ACCEPTED, QUARANTINED, DUPLICATE or SUPERSEDED says the server holds that version). A
quarantined current form counts as reported-but-flagged: nothing in the totals, not in `progres`.
Whether a form is quarantined is the load test's own knowledge (it made it inconsistent on purpose),
not what tally said; tally's answer is checked against it separately.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from suara.loadtest.forms import Variant
from suara.loadtest.registry import ContestRegistry

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


VotesOf = Callable[[str, Current], list[int]]  # (tps, current form) -> votes in choice order


def totals(
    registry: ContestRegistry, current: dict[tuple[str, str], Current], votes_of: VotesOf
) -> dict[str, AreaTotals]:
    """Every area's and TPS's totals over ALL TPS of the contest (those never sampled count as not reported).

    Bottom-up: each TPS once, then each area from its children, so the cost is one pass over the tree.
    """
    n = len(registry.choices)
    out: dict[str, AreaTotals] = {}
    for tps in registry.tps():
        form = current.get((tps, registry.contest))
        counted = form is not None and not form.quarantined
        out[tps] = AreaTotals(votes_of(tps, form) if form is not None and counted else [0] * n, int(counted), 1)
    for area in sorted(registry.children, key=len, reverse=True):  # desa before kecamatan … national last
        t = AreaTotals([0] * n)
        for kid in registry.children[area]:
            k = out[kid]
            t.reported += k.reported
            t.total += k.total
            if k.reported:
                t.votes = [a + b for a, b in zip(t.votes, k.votes, strict=True)]
        out[area] = t
    return out


def _row(choices: tuple[str, ...], t: AreaTotals) -> dict[str, Any]:
    if not t.reported:
        return {"persen": pct(0, t.total), "psu": None, "status_progress": False}
    return {**dict(zip(choices, t.votes, strict=True)), "persen": pct(t.reported, t.total), "psu": None,
            "status_progress": True}  # fmt: skip


def expected_totals(registry: ContestRegistry, sums: dict[str, AreaTotals]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(area code, the parts of its totals file the oracle knows: chart, table, progres) for every area."""
    choices = registry.choices
    for area, kids in registry.children.items():
        t = sums[area]
        yield (
            area,
            {
                "chart": {**dict(zip(choices, t.votes, strict=True)), "persen": pct(t.reported, t.total)},
                "table": {kid: _row(choices, sums[kid]) for kid in kids},
                "progres": {"progres": t.reported, "total": t.total},
            },
        )


def expected_tps(
    choices: tuple[str, ...], form: Current | None, votes: list[int] | None, administrasi: dict[str, int] | None
) -> dict[str, Any]:
    """The parts of a TPS file the oracle knows: the chart as signed, administrasi and the status flags."""
    if form is None or votes is None:
        return {"chart": None, "administrasi": None, "status_suara": False, "status_adm": False}
    return {
        "chart": {"null": None, **dict(zip(choices, votes, strict=True))},
        "administrasi": administrasi,
        "status_suara": not form.quarantined,
        "status_adm": not form.quarantined,
    }
