"""The synthetic TPS list: reproducible, well-formed, covering every kabupaten/kota, Pemilu-sized."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from suara.registry.areas import read_areas
from suara.registry.synthetic import (
    FIRST_SPECIAL_NUMBER,
    MAX_DPT,
    MAX_REGULAR_PER_DESA,
    PEMILU_2024_TPS,
    Tps,
    synthetic_tps,
)

scales = st.floats(min_value=0.0005, max_value=0.01)
seeds = st.integers(min_value=0, max_value=2**63 - 1)


@pytest.fixture(scope="module")
def full() -> list[Tps]:
    return synthetic_tps(read_areas(), scale=1.0, seed=7)


@settings(max_examples=4, deadline=None)
@given(scale=scales, seed=seeds)
def test_the_same_scale_and_seed_give_the_same_list(scale: float, seed: int) -> None:
    assert synthetic_tps(read_areas(), scale=scale, seed=seed) == synthetic_tps(read_areas(), scale=scale, seed=seed)


@settings(max_examples=15, deadline=None)
@given(scale=scales, seed=seeds)
def test_a_small_list_is_well_formed_and_covers_every_kabupaten(scale: float, seed: int) -> None:
    areas = read_areas()
    tps = synthetic_tps(areas, scale=scale, seed=seed)
    desas = {a.code for a in areas if a.level == 4}
    assert {t.desa[:2] for t in tps} == {a.code for a in areas if a.level == 1}
    assert {t.desa[:4] for t in tps} == {a.code for a in areas if a.level == 2}
    assert [t.code for t in tps] == sorted({t.code for t in tps})  # unique, in order
    for t in tps:
        assert t.desa in desas and t.code == f"{t.desa}{t.number:03d}", t
        assert 1 <= t.number <= MAX_REGULAR_PER_DESA or t.number >= FIRST_SPECIAL_NUMBER, t
        assert 1 <= t.dpt <= MAX_DPT, t
    regular = Counter(t.desa for t in tps if t.number < FIRST_SPECIAL_NUMBER)
    assert max(regular.values()) <= MAX_REGULAR_PER_DESA
    # The sample, plus at most one TPS for each kabupaten/kota it missed.
    wanted = round(PEMILU_2024_TPS * scale)
    assert wanted <= len(tps) <= wanted + sum(a.level == 2 for a in areas)


def test_the_full_list_is_pemilu_2024_sized(full: list[Tps]) -> None:
    assert abs(len(full) - 823_000) <= 0.02 * 823_000
    assert len(full) == PEMILU_2024_TPS
    assert len({t.code for t in full}) == len(full)
    assert {t.desa for t in full} == {a.code for a in read_areas() if a.level == 4}


def test_the_full_list_has_a_realistic_skew(full: list[Tps]) -> None:
    per_desa = Counter(t.desa for t in full if t.number < FIRST_SPECIAL_NUMBER)
    sizes = Counter(per_desa.values())
    assert min(sizes) >= 1 and max(sizes) == MAX_REGULAR_PER_DESA
    assert sum(n for size, n in sizes.items() if 5 <= size <= 15) > 0.6 * len(per_desa)
    assert sum(n for size, n in sizes.items() if size >= 30) > 0
    assert any(t.number >= FIRST_SPECIAL_NUMBER for t in full)
    # Numbered from 001 without gaps.
    numbers: dict[str, list[int]] = {}
    for t in full:
        numbers.setdefault(t.desa, []).append(t.number)
    assert all(ns[: per_desa[d]] == list(range(1, per_desa[d] + 1)) for d, ns in numbers.items())


def test_a_smaller_scale_is_a_sample_of_the_full_list(full: list[Tps]) -> None:
    assert set(synthetic_tps(read_areas(), scale=0.002, seed=7)) <= set(full)
    assert set(synthetic_tps(read_areas(), scale=0.3, seed=7)) <= set(full)


def test_another_seed_gives_another_list() -> None:
    assert synthetic_tps(read_areas(), scale=0.001, seed=1) != synthetic_tps(read_areas(), scale=0.001, seed=2)


@pytest.mark.parametrize("scale", [0.0, -0.5, 1.5, math.nan, math.inf])
def test_a_scale_outside_zero_to_one_is_refused(scale: float) -> None:
    with pytest.raises(ValueError, match="scale"):
        synthetic_tps(read_areas(), scale=scale, seed=1)
