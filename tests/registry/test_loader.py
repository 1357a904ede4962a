"""load_registry: replaces the whole registry in one transaction, and readers never see half of it."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from suara.registry import loader
from suara.registry.areas import read_areas
from suara.registry.contests import ContestConfigError, read_contests
from suara.registry.loader import load_registry
from suara.registry.synthetic import Tps, synthetic_tps
from tests.support.databases import TEST_SCALE, TEST_SEED


async def snapshot(conn: asyncpg.Connection) -> dict[str, Any]:
    """What a reader sees of the registry, in one statement (one snapshot)."""
    row = await conn.fetchrow(
        """SELECT (SELECT array_agg(n ORDER BY level)
                   FROM (SELECT level, count(*) n FROM registry.area GROUP BY level) l) AS areas,
                  (SELECT count(*) FROM registry.tps) AS tps,
                  (SELECT coalesce(sum(dpt), 0) FROM registry.tps) AS dpt,
                  (SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM registry.contest) AS contests,
                  (SELECT count(*) FROM registry.choice) AS choices,
                  (SELECT max(id) FROM registry.load) AS load_id"""
    )
    return dict(row)


def expected(tps: list[Tps], load_id: int) -> dict[str, Any]:
    contests = read_contests()
    return {
        "areas": [n for _, n in sorted(Counter(a.level for a in read_areas()).items())],
        "tps": len(tps),
        "dpt": sum(t.dpt for t in tps),
        "contests": sorted(c.id for c in contests),
        "choices": sum(len(c.choices) for c in contests),
        "load_id": load_id,
    }


async def db_tps(conn: asyncpg.Connection) -> list[Tps]:
    rows = await conn.fetch("SELECT code, desa, number, dpt FROM registry.tps ORDER BY code")
    return [Tps(*r) for r in rows]


async def test_the_test_registry_is_the_generated_one(db: asyncpg.Connection) -> None:
    tps = synthetic_tps(read_areas(), scale=TEST_SCALE, seed=TEST_SEED)
    assert await db_tps(db) == tps
    assert await snapshot(db) == expected(tps, 1)
    load = await db.fetchrow("SELECT * FROM registry.load")
    assert (load["synthetic_scale"], load["seed"], load["tps"]) == (TEST_SCALE, TEST_SEED, len(tps))


async def test_a_reload_replaces_everything_and_readers_see_old_or_new_never_half(
    db: asyncpg.Connection, db_url: str
) -> None:
    old = await snapshot(db)
    new_tps = synthetic_tps(read_areas(), scale=0.001, seed=3)
    seen: dict[str, dict[str, Any]] = {}

    async def read_from_another_connection() -> dict[str, Any]:
        # A lock (TRUNCATE, say) would make this wait: fail then instead of hanging.
        other = await asyncpg.connect(db_url, server_settings={"lock_timeout": "5s"})
        try:
            return await snapshot(other)
        finally:
            await other.close()

    def progress(phase: str, done: int, total: int) -> None:
        # The loader's loop is blocked until the reader, in its own thread and
        # loop, has answered: the load's transaction is open at that moment.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            seen[f"{phase} {done}"] = pool.submit(asyncio.run, read_from_another_connection()).result()

    summary = await load_registry(db, synthetic_scale=0.001, seed=3, progress=progress)

    in_transaction = {k for k in seen if k.split()[0] in {"delete", "area", "tps", "contests"}}
    assert {"delete", "area", "tps", "contests"} <= {k.split()[0] for k in in_transaction}
    assert all(seen[k] == old for k in in_transaction)
    assert seen[f"commit {1}"] == expected(new_tps, summary.load_id) == await snapshot(db)
    assert await db_tps(db) == new_tps
    assert (summary.tps, summary.dpt, summary.areas) == (len(new_tps), sum(t.dpt for t in new_tps), len(read_areas()))
    loads = await db.fetch("SELECT synthetic_scale, seed, tps FROM registry.load ORDER BY id")
    assert [tuple(r) for r in loads] == [(TEST_SCALE, TEST_SEED, old["tps"]), (0.001, 3, len(new_tps))]


async def test_without_a_scale_there_are_areas_and_contests_but_no_tps(db: asyncpg.Connection) -> None:
    summary = await load_registry(db, synthetic_scale=None)
    assert await snapshot(db) == expected([], summary.load_id)
    load = await db.fetchrow("SELECT synthetic_scale, seed FROM registry.load WHERE id = $1", summary.load_id)
    assert tuple(load) == (None, None)


async def test_a_load_that_fails_midway_leaves_the_old_registry(
    db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = await snapshot(db)

    def with_a_tps_in_no_desa(*args: Any, **kwargs: Any) -> list[Tps]:
        return [*synthetic_tps(*args, **kwargs), Tps("9999999999001", "9999999999", 1, 100)]

    monkeypatch.setattr(loader, "synthetic_tps", with_a_tps_in_no_desa)
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await load_registry(db, synthetic_scale=0.001, seed=3)
    assert await snapshot(db) == old


async def test_a_contest_scope_must_be_a_real_province_or_kabupaten(db: asyncpg.Connection, tmp_path: Path) -> None:
    old = await snapshot(db)
    path = tmp_path / "contests.toml"
    path.write_text(
        '[[contest]]\nid = "pkwkp"\nname = "Gubernur"\nscope = "10"\nmax_voters_per_tps = 600\n'
        'choices = [{ id = "1", nama = "A", nomor_urut = 1, warna = "#000000" }]\n'
    )
    with pytest.raises(ContestConfigError, match="no province or kabupaten/kota with code 10"):
        await load_registry(db, synthetic_scale=None, contests_path=path)
    assert await snapshot(db) == old


async def test_two_loads_at_once_take_turns(db: asyncpg.Connection, db_url: str) -> None:
    other = await asyncpg.connect(db_url)
    try:
        first, second = await asyncio.gather(
            load_registry(db, synthetic_scale=0.001, seed=1), load_registry(other, synthetic_scale=0.0015, seed=2)
        )
    finally:
        await other.close()
    last = max((first, second), key=lambda s: s.load_id)
    assert sorted([first.load_id, second.load_id]) == [2, 3]
    assert last.synthetic_scale is not None and last.seed is not None
    assert await db_tps(db) == synthetic_tps(read_areas(), scale=last.synthetic_scale, seed=last.seed)
