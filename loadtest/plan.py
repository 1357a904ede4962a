"""What the night brings, decided up front from a seed: who reports when, and which faults each TPS has.

A plan is a list of jobs, each at a point of the night (`at`, 0…1 of the compressed night):
- a *station* job: a device reports its TPS's forms for every contest held there;
- a *late* job: the correction of an inconsistent form, signed a while after it;
- a *reconnect* job: a device that was offline comes back and flushes its outbox.

Arrivals follow Beta(2, 5): few at first (the count takes hours), a peak about a fifth into the
night (density ≈ 2.46 × the mean) and a long tail of remote TPS. Open loop scales the night to
`jobs / rate` seconds, so `--rate` is the mean arrival rate; closed loop keeps only the order.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from loadtest.forms import Variant

# The kinds of fault a plan can hold; how often each happens is a profile of config.py.
FAULTS = ("duplicate", "lost_reply", "correction", "stale", "inconsistent", "malformed", "offline")
# When the faults are on and there are at least this many (TPS, contest) pairs, every kind happens
# at least once: a small run still exercises each outcome instead of depending on luck.
FORCE_EACH_FROM = 20
CURVE_ALPHA, CURVE_BETA = 2.0, 5.0

Action = Literal["send", "resend", "lost_reply"]
JobKind = Literal["station", "late", "reconnect"]
_ORDER = {"station": 0, "late": 1, "reconnect": 2}  # at the same instant a device reports before it corrects


@dataclass(frozen=True, slots=True)
class Step:
    contest: str
    version: int
    variant: Variant
    action: Action = "send"


@dataclass(frozen=True, slots=True)
class Job:
    at: float  # 0…1 of the night
    tps: str
    kind: JobKind
    steps: tuple[Step, ...] = ()
    offline: bool = False  # a station job of an offline device: store only, the reconnect job sends


@dataclass
class Plan:
    jobs: list[Job]  # by `at`
    faults: Counter[str] = field(default_factory=Counter)  # how many (TPS, contest) pairs (devices, offline) got each

    @property
    def stations(self) -> int:
        return sum(1 for j in self.jobs if j.kind == "station")

    def forms(self) -> int:
        return sum(len(j.steps) for j in self.jobs)


def arrival(rng: random.Random) -> float:
    return rng.betavariate(CURVE_ALPHA, CURVE_BETA)


def sample_tps(tps: Sequence[str], scale: float, seed: int) -> list[str]:
    """A seeded sample of `scale` × the TPS (at least one), in code order."""
    if not 0 < scale <= 1:
        raise ValueError(f"--scale must be in (0, 1], got {scale}")
    if scale == 1:
        return list(tps)
    n = max(1, round(len(tps) * scale))
    return sorted(random.Random(f"sample:{seed}").sample(list(tps), n))


def make_plan(held: Mapping[str, Sequence[str]], rates: Mapping[str, float], seed: int) -> Plan:
    """The plan for these TPS (-> contests held there), faults drawn per pair with `rates`."""
    rng = random.Random(f"plan:{seed}")
    pairs = [(tps, c) for tps, contests in held.items() for c in contests]
    drawn: dict[tuple[str, str], set[str]] = {pair: set() for pair in pairs}
    offline = {tps for tps in held if rng.random() < rates.get("offline", 0.0)}
    for pair in pairs:
        for kind in FAULTS:
            if kind != "offline" and rng.random() < rates.get(kind, 0.0):
                drawn[pair].add(kind)
    if len(pairs) >= FORCE_EACH_FROM:
        if rates.get("offline", 0.0) > 0 and not offline:
            offline.add(rng.choice(list(held)))
        online = [p for p in pairs if p[0] not in offline]  # after offline is settled: its devices skip some kinds
        for kind in FAULTS:
            if kind != "offline" and rates.get(kind, 0.0) > 0 and online and not any(kind in drawn[p] for p in online):
                drawn[rng.choice(online)].add(kind)
    plan = Plan([])
    for tps, contests in held.items():
        at = arrival(rng)
        now: list[Step] = []
        later: list[Step] = []
        is_offline = tps in offline
        if is_offline:
            plan.faults["offline"] += 1
        for contest in contests:
            kinds = drawn[(tps, contest)]
            if is_offline:
                kinds = kinds - {"duplicate", "lost_reply", "malformed"}  # they need an answer from tally first
            plan.faults.update(kinds)
            first, rest = _steps(contest, kinds)
            now.extend(first)
            (now if is_offline else later).extend(rest)  # an offline device signs its correction before it is back
        plan.jobs.append(Job(at, tps, "station", tuple(now), offline=is_offline))
        if is_offline:
            plan.jobs.append(Job(min(1.0, at + rng.uniform(0.05, 0.3)), tps, "reconnect"))
        if later:
            plan.jobs.append(Job(min(1.0, at + rng.uniform(0.05, 0.3)), tps, "late", tuple(later)))
    plan.jobs.sort(key=lambda j: (j.at, _ORDER[j.kind], j.tps))
    return plan


def _steps(contest: str, kinds: set[str]) -> tuple[list[Step], list[Step]]:
    """The steps of one (TPS, contest): those sent at once, and those sent later (after an inconsistent form)."""
    now: list[Step] = []
    if "malformed" in kinds:
        now.append(Step(contest, 1, "malformed"))  # refused; the officer fixes it and sends v1 again
    first: Variant = "inconsistent" if "inconsistent" in kinds else "ok"
    now.append(Step(contest, 1, first, "lost_reply" if "lost_reply" in kinds else "send"))
    if "duplicate" in kinds:
        now.append(Step(contest, 1, first, "resend"))
    rest: list[Step] = []
    version = 1
    if first == "inconsistent":
        version = 2
        rest.append(Step(contest, version, "ok"))  # the corrected form, signed later
    if "correction" in kinds:
        version += 1
        rest.append(Step(contest, version, "ok"))
    if "stale" in kinds:
        rest.append(Step(contest, version + 2, "ok"))  # the newer one first …
        rest.append(Step(contest, version + 1, "ok"))  # … then an older one, never sent before → SUPERSEDED
    if first == "inconsistent":
        return now, rest
    return now + rest, []
