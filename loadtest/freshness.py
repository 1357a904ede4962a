"""How long an acknowledged form takes to show in the published national file.

A sampler reads `pemilu/hhcw/{c}.json` every `interval_s`. For each acknowledgement that changed the
number of counted TPS to n at time t, freshness is the time of the first sample at or after t whose
`progres.progres` is at least n. This is an approximation, and says so:
- resolution is the sampling interval (a sample's time is when its read finished: an upper bound);
- `progres` counts TPS, so a correction of a TPS already counted (or a quarantined form) changes no
  count and is not measured; the plan never turns a counted TPS into a quarantined one, so the count
  only grows and "first reaches n" is well defined.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from loadtest.registry import totals_path
from loadtest.site import Site, SiteError, read_json


@dataclass
class Sampler:
    site: Site
    contests: Sequence[str]
    interval_s: float = 0.5
    samples: dict[str, list[tuple[float, int]]] = field(default_factory=dict)  # contest -> (monotonic s, progres)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loadtest-freshness")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def latest(self, contest: str) -> int:
        series = self.samples.get(contest)
        return series[-1][1] if series else 0

    async def sample_once(self) -> None:
        for contest in self.contests:
            with contextlib.suppress(SiteError):  # a read error is a missed sample, not a failed run
                doc = await read_json(self.site, totals_path(contest, ""))
                if isinstance(doc, dict):
                    self.samples.setdefault(contest, []).append((time.monotonic(), int(doc["progres"]["progres"])))

    async def _run(self) -> None:
        while True:
            await self.sample_once()
            await asyncio.sleep(self.interval_s)  # polling a file on a site: there is nothing to await


@dataclass(frozen=True)
class Freshness:
    seconds: list[float]  # one per measured acknowledgement
    unseen: int  # acknowledgements never seen published (the run ended first)


def freshness(acks: dict[str, list[tuple[float, int]]], samples: dict[str, list[tuple[float, int]]]) -> Freshness:
    out: list[float] = []
    unseen = 0
    for contest, events in acks.items():
        series = samples.get(contest, [])
        times = [t for t, _ in series]
        reached: list[int] = []  # running max: the first sample reaching n is found by bisection
        for _, n in series:
            reached.append(max(n, reached[-1]) if reached else n)
        for at, n in events:
            i = max(bisect.bisect_left(times, at), bisect.bisect_left(reached, n))
            if i < len(times):
                out.append(times[i] - at)
            else:
                unseen += 1
    return Freshness(out, unseen)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted `values`; None when empty."""
    if not values:
        return None
    rank = max(1, -(-len(values) * q // 100))  # ceil(n × q / 100), at least 1
    return values[int(rank) - 1]
