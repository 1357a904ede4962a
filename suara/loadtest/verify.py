"""Every published totals file of the sampled contests, at every level, and each sampled TPS's, against the oracle.

Files are checked as a stream (expected documents are built one at a time and dropped once checked):
at scale 1.0 the expectations alone would not fit in memory. Mismatches are rechecked after a wait,
because a file can lag the pointer by one cycle; what still differs then is reported.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from suara.loadtest.forms import administrasi_of, make_form, votes_of
from suara.loadtest.oracle import Current, Oracle, expected_totals, expected_tps, totals
from suara.loadtest.registry import ContestRegistry, nest, totals_path
from suara.loadtest.site import Site

DETAILS = 50  # mismatches reported in full
RECHECK_MAX = 10_000  # more than this many bad files is no lag: report them without waiting


@dataclass(frozen=True)
class Mismatch:
    path: str
    field: str
    got: Any
    want: Any


@dataclass
class Verification:
    exact: bool = True
    areas_checked: int = 0
    tps_checked: int = 0
    mismatch_count: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)  # the first DETAILS

    def to_json(self) -> dict[str, Any]:
        return {
            "exact": self.exact,
            "areas_checked": self.areas_checked,
            "tps_checked": self.tps_checked,
            "mismatch_count": self.mismatch_count,
            "mismatches": [asdict(m) for m in self.mismatches],
        }


Expected = tuple[str, dict[str, Any]]  # (path, the keys the oracle knows and their values)


def _diff(path: str, got: Any, want: dict[str, Any]) -> list[Mismatch]:
    if got is None:
        return [Mismatch(path, "file", None, "present")]
    if not isinstance(got, dict):
        return [Mismatch(path, "file", type(got).__name__, "a JSON object")]
    out: list[Mismatch] = []
    for key, value in want.items():
        have = got.get(key)
        if have == value:
            continue
        if isinstance(value, dict) and isinstance(have, dict):  # name the row or choice that differs
            for sub in sorted(set(value) | set(have)):
                if have.get(sub) != value.get(sub):
                    out.append(Mismatch(path, f"{key}.{sub}", have.get(sub), value.get(sub)))
        else:
            out.append(Mismatch(path, key, have, value))
    return out


def area_expectations(registry: ContestRegistry, oracle: Oracle, seed: int) -> Iterator[Expected]:
    choices = registry.choices

    def votes(tps: str, form: Current) -> list[int]:
        return votes_of(seed, tps, registry.contest, form.version, form.variant, choices)

    sums = totals(registry, oracle.current, votes)
    for area, doc in expected_totals(registry, sums):
        yield totals_path(registry.contest, area), doc


def tps_expectations(
    registry: ContestRegistry, oracle: Oracle, seed: int, sampled: Iterable[str]
) -> Iterator[Expected]:
    contest, choices = registry.contest, registry.choices
    for tps in sampled:
        form = oracle.current.get((tps, contest))
        signed = None if form is None else make_form(seed, tps, contest, form.version, form.variant, choices)
        votes = None if signed is None else [signed.votes[c] for c in choices]
        admin = None if signed is None else administrasi_of(signed)
        yield f"pemilu/hhcw/{contest}/{nest(tps)}.json", expected_tps(choices, form, votes, admin)


class Checker:
    def __init__(self, site: Site, concurrency: int, on_progress: Callable[[int], None] | None = None) -> None:
        self.site = site
        self.concurrency = concurrency
        self.on_progress = on_progress
        self.checked = 0
        self.bad: list[tuple[Expected, list[Mismatch]]] = []

    async def check(self, expectations: Iterator[Expected]) -> int:
        """Read and compare every expected file; the number checked."""
        count = 0

        async def worker() -> None:
            nonlocal count
            for path, want in expectations:  # one shared iterator across workers: each file once
                data = await self.site.read(path)
                got = None if data is None else _parse(data)
                problems = _diff(path, got, want)
                if problems:
                    self.bad.append(((path, want), problems))
                count += 1
                self.checked += 1
                if self.on_progress is not None:
                    self.on_progress(self.checked)

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        return count

    async def recheck(self) -> None:
        """Read the mismatching files again; keep what still differs."""
        bad, self.bad = self.bad, []
        for (path, want), _ in bad:
            data = await self.site.read(path)
            problems = _diff(path, None if data is None else _parse(data), want)
            if problems:
                self.bad.append(((path, want), problems))


def _parse(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return "not JSON"


async def verify(
    site: Site,
    registries: Iterable[ContestRegistry],
    oracle: Oracle,
    seed: int,
    sampled: dict[str, list[str]],  # contest -> sampled TPS where it is held
    *,
    concurrency: int = 32,
    recheck_rounds: int = 2,
    recheck_wait_s: float = 2.0,
    on_progress: Callable[[int], None] | None = None,
) -> Verification:
    checker = Checker(site, concurrency, on_progress)
    result = Verification()
    for registry in registries:
        result.areas_checked += await checker.check(area_expectations(registry, oracle, seed))
        result.tps_checked += await checker.check(
            tps_expectations(registry, oracle, seed, sampled.get(registry.contest, []))
        )
    for _ in range(recheck_rounds):
        if not checker.bad or len(checker.bad) > RECHECK_MAX:
            break
        await asyncio.sleep(recheck_wait_s)  # the publisher may be one cycle behind the pointer we waited for
        await checker.recheck()
    problems = [m for _, ms in checker.bad for m in ms]
    result.mismatch_count = len(problems)
    result.mismatches = problems[:DETAILS]
    result.exact = not problems
    return result
