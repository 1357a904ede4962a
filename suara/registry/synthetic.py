"""A reproducible synthetic TPS list over the real desa, shaped like Pemilu 2024's.

The real TPS list is not published in bulk, so we make one. At scale 1.0 it has
exactly as many TPS as Pemilu 2024 (823,220). Per desa:

- regular TPS numbered 001 up to at most 040; how many follows a log-normal
  (median about 8, most desa 5 to 15), a kelurahan (urban, code 1xxx) about
  1.7 times as many, capped at 40;
- rarely, special TPS (TPS lokasi khusus: hospitals, prisons) numbered 901 on;
- DPT split evenly across the desa's regular TPS as KPU does, 150 to 300 each
  (mean about 250; Pemilu 2024: 204.8 M voters over 823k TPS), so TPS of one
  desa differ by at most one voter. Special TPS have 20 to 300.

A smaller scale is a sample of the scale-1.0 list (same seed: its TPS codes are
a subset, and every kept TPS keeps its number), plus one TPS in each
kabupaten/kota the sample missed, so every province and kabupaten/kota keeps
at least one TPS. Its size is round(823,220 × scale) plus those few.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Iterable
from itertools import accumulate
from typing import NamedTuple

from suara.registry.areas import Area

PEMILU_2024_TPS = 823_220
MAX_REGULAR_PER_DESA = 40
FIRST_SPECIAL_NUMBER = 901
MIN_DPT, MAX_DPT = 150, 300
MIN_SPECIAL_DPT = 20

_SIGMA = 0.55  # log-normal spread of TPS per desa: ~70% of desa get 5-15
_URBAN = 1.7  # a kelurahan has more voters than a rural desa
_SPECIAL_RATE = 0.005  # desa with special TPS (1 or 2 of them)


class Tps(NamedTuple):
    # A tuple, not a dataclass: 823k of them build fast and COPY as they are.
    code: str  # desa code + 3-digit number
    desa: str
    number: int
    dpt: int


def synthetic_tps(areas: Iterable[Area], *, scale: float, seed: int) -> list[Tps]:
    """The TPS list for (scale, seed), sorted by code; the same arguments give the same list.

    `scale` is in (0, 1]; `areas` must include the desa (level 4) to place TPS in.
    """
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], not {scale}")
    desas = sorted(a.code for a in areas if a.level == 4)
    if not desas:
        raise ValueError("no desa (level 4 areas) to place TPS in")
    rng = random.Random(seed)
    # Everything drawn before the sample is independent of the scale, so a
    # smaller list is a true sample of the full one.
    regular, special = _tps_per_desa(desas, rng)
    # Voters per desa: 150 to 300 per TPS, the max of two uniforms leaning to full TPS (mean ~250).
    spread = MAX_DPT - MIN_DPT
    dpt_total = [n * MIN_DPT + int((n * spread + 1) * max(rng.random(), rng.random())) for n in regular]
    special_dpt = [[rng.randint(MIN_SPECIAL_DPT, MAX_DPT) for _ in range(m)] for m in special]

    def build(d: int, slot: int) -> Tps:
        n = regular[d]
        if slot < n:
            number = slot + 1
            base, extra = divmod(dpt_total[d], n)
            dpt = base + (number <= extra)
        else:
            number = FIRST_SPECIAL_NUMBER + slot - n
            dpt = special_dpt[d][slot - n]
        desa = desas[d]
        return Tps(f"{desa}{number:03d}", desa, number, dpt)

    sizes = [r + s for r, s in zip(regular, special, strict=True)]
    if scale == 1:
        return [build(d, slot) for d, size in enumerate(sizes) for slot in range(size)]
    return [build(d, slot) for d, slot in _sample(desas, sizes, scale, rng)]


def _tps_per_desa(desas: list[str], rng: random.Random) -> tuple[list[int], list[int]]:
    """(regular, special) TPS per desa at scale 1.0, summing to exactly PEMILU_2024_TPS."""
    weights = [rng.lognormvariate(0.0, _SIGMA) * (_URBAN if d[6] == "1" else 1.0) for d in desas]
    special = [(1 + (rng.random() < 0.3)) if rng.random() < _SPECIAL_RATE else 0 for _ in desas]
    target = PEMILU_2024_TPS - sum(special)
    if not len(desas) <= target <= len(desas) * MAX_REGULAR_PER_DESA:
        raise ValueError(f"{len(desas)} desa cannot hold {target} regular TPS")
    factor = target / sum(weights)
    regular = [min(MAX_REGULAR_PER_DESA, max(1, round(w * factor))) for w in weights]
    # Rounding and the caps leave the sum a little off: nudge random desa by one.
    diff = target - sum(regular)
    while diff:
        d = rng.randrange(len(desas))
        step = 1 if diff > 0 else -1
        if 1 <= regular[d] + step <= MAX_REGULAR_PER_DESA:
            regular[d] += step
            diff -= step
    return regular, special


def _sample(desas: list[str], sizes: list[int], scale: float, rng: random.Random) -> list[tuple[int, int]]:
    """round(total × scale) TPS at random, plus one in each kabupaten/kota left without; as (desa, slot)."""
    # Position p in the full list is slot p - starts[d] of desa d = bisect_right(starts, p) - 1.
    starts = list(accumulate(sizes, initial=0))
    picked = rng.sample(range(starts[-1]), round(starts[-1] * scale))
    # Desa are sorted by code, so a kabupaten/kota's TPS are one run of positions.
    runs: dict[str, tuple[int, int]] = {}
    for d, desa in enumerate(desas):
        first = runs.get(desa[:4], (starts[d], 0))[0]
        runs[desa[:4]] = (first, starts[d + 1])
    covered = {desas[bisect_right(starts, p) - 1][:4] for p in picked}
    picked.extend(rng.randrange(*run) for kab, run in runs.items() if kab not in covered)
    picked.sort()
    return [(d, p - starts[d]) for p in picked for d in (bisect_right(starts, p) - 1,)]
