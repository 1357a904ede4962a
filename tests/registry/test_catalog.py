"""The read side: TpsIndex against a dict, and what the services fetch from a loaded registry."""

from __future__ import annotations

import dataclasses
import tracemalloc
from array import array

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from suara.registry.areas import read_areas
from suara.registry.catalog import TpsIndex, fetch_contests, fetch_tps_index, tps_exists
from suara.registry.contests import read_contests
from suara.registry.synthetic import PEMILU_2024_TPS, synthetic_tps
from tests.support.databases import TEST_SCALE, TEST_SEED

tps_codes = st.from_regex(r"[0-9]{13}", fullmatch=True)
registries = st.dictionaries(tps_codes, st.integers(min_value=1, max_value=600), max_size=200)
# Near misses and things that are not TPS codes at all.
probes = st.one_of(
    tps_codes,
    st.from_regex(r"[0-9]{12,14}", fullmatch=True),
    st.text(max_size=14),
    st.just("١١٠١٠١٢٠٠١٠٠١"),  # Arabic-Indic digits: int() would take them
    st.integers(),
    st.none(),
)


@settings(max_examples=200)
@given(registry=registries, extra=st.lists(probes, max_size=20))
def test_tps_index_answers_like_a_dict(registry: dict[str, int], extra: list[object]) -> None:
    index = TpsIndex.from_items(registry.items())
    assert len(index) == len(registry)
    neighbours = [f"{int(c) + d:013d}" for c in registry for d in (-1, 1) if 0 <= int(c) + d < 10**13]
    for probe in [*registry, *neighbours, *extra]:
        assert (probe in index) == (probe in registry), probe
        if isinstance(probe, str):
            assert index.dpt(probe) == registry.get(probe), probe


def test_tps_index_insists_on_sorted_unique_codes() -> None:
    with pytest.raises(ValueError, match="increasing"):
        TpsIndex(array("q", [2, 1]), array("H", [1, 1]))
    with pytest.raises(ValueError, match="increasing"):
        TpsIndex(array("q", [1, 1]), array("H", [1, 1]))
    with pytest.raises(ValueError, match="same length"):
        TpsIndex(array("q", [1]), array("H", []))
    with pytest.raises(ValueError, match="not a TPS code"):
        TpsIndex.from_items([("110101200100", 1)])


def test_a_pemilu_sized_index_fits_in_well_under_20_mb() -> None:
    first = 1101012001001
    tracemalloc.start()
    try:
        index = TpsIndex(array("q", range(first, first + PEMILU_2024_TPS)), array("H", [300]) * PEMILU_2024_TPS)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(index) == PEMILU_2024_TPS and str(first + 5) in index
    assert held < 10 * 2**20 and index.nbytes < 10 * 2**20


async def test_fetch_contests_returns_the_configured_contests(db: asyncpg.Connection) -> None:
    fetched = await fetch_contests(db)
    assert list(fetched) == sorted(fetched)
    expected = {
        c.id: dataclasses.replace(c, choices=tuple(sorted(c.choices, key=lambda ch: ch.nomor_urut)))
        for c in read_contests()
    }
    assert fetched == expected


async def test_fetch_tps_index_holds_exactly_the_generated_tps(db: asyncpg.Connection) -> None:
    oracle = {t.code: t.dpt for t in synthetic_tps(read_areas(), scale=TEST_SCALE, seed=TEST_SEED)}
    index = await fetch_tps_index(db)
    assert len(index) == len(oracle)
    assert all(index.dpt(code) == dpt for code, dpt in oracle.items())
    assert not any(f"{code[:10]}999" in index for code in oracle)


async def test_tps_exists_reads_one_tps(db: asyncpg.Connection) -> None:
    tps = synthetic_tps(read_areas(), scale=TEST_SCALE, seed=TEST_SEED)
    assert await tps_exists(db, tps[0].code) == tps[0].dpt
    assert await tps_exists(db, tps[0].code[:10] + "999") is None
    assert await tps_exists(db, "31") is None
