"""`suara registry load --shape pemilu2024` against real PostgreSQL: the whole shape round-trips, the
constraints refuse a broken map, and the default election loads as before afterwards."""

from __future__ import annotations

import dataclasses

import asyncpg
import pytest

from suara.election.contest import Contest
from suara.registry.areas import read_areas
from suara.registry.catalog import fetch_contests
from suara.registry.contests import read_contests
from suara.registry.districts import SHAPES, abroad_tps, read_shape
from suara.registry.loader import load_registry
from suara.registry.synthetic import synthetic_tps

SCALE, SEED = 0.001, 3


def in_db_order(contest: Contest) -> Contest:
    return dataclasses.replace(contest, choices=tuple(sorted(contest.choices, key=lambda c: (c.nomor_urut, c.id))))


async def test_the_whole_election_round_trips_through_the_registry(db: asyncpg.Connection) -> None:
    summary = await load_registry(db, synthetic_scale=SCALE, seed=SEED, shape=SHAPES["pemilu2024"])
    shape = read_shape(SHAPES["pemilu2024"], read_areas(), SEED)
    fetched = await fetch_contests(db)
    assert fetched == {c.id: in_db_order(c) for c in shape.contests}
    tps = synthetic_tps(read_areas(), scale=SCALE, seed=SEED) + abroad_tps(shape, scale=SCALE, seed=SEED)
    rows = await db.fetch("SELECT code, dpt FROM registry.tps ORDER BY code")
    assert [(r["code"], r["dpt"]) for r in rows] == [(t.code, t.dpt) for t in tps]
    abroad = await db.fetch("SELECT code, level, name FROM registry.area WHERE code LIKE '99%' ORDER BY code")
    assert [(r["code"], r["level"], r["name"]) for r in abroad] == [
        (a.code, a.level, a.name) for a in shape.abroad_areas
    ]
    counts = dict(await db.fetch("SELECT contest, count(*) FROM registry.district GROUP BY contest"))
    assert counts == {"ppwp": 1, "pdpr": 84, "pdpd": 38, "pdprdp": len(fetched["pdprdp"].districts),
                      "pdprdk": len(fetched["pdprdk"].districts), "pkwkp": 37, "pkwkk": 508}  # fmt: skip
    assert await db.fetchval("SELECT sum(seats) FROM registry.district WHERE contest = 'pdpr'") == 580
    assert summary.districts == sum(counts.values())
    assert summary.tps == len(tps)

    # Back to the default election: no district is left, and it is what it always was.
    await load_registry(db, synthetic_scale=SCALE, seed=SEED)
    assert await db.fetchval("SELECT count(*) FROM registry.district") == 0
    assert await db.fetchval("SELECT count(*) FROM registry.area WHERE code LIKE '99%'") == 0
    assert await fetch_contests(db) == {c.id: in_db_order(c) for c in read_contests()}


async def insert_contest(db: asyncpg.Connection, kind: str) -> None:
    await db.execute(
        "INSERT INTO registry.contest (id, name, scope, max_voters_per_tps, kind) VALUES ($1, 'x', '', 300, $1)", kind
    )


@pytest.mark.parametrize(("kind", "seats", "ok"), [("pdpr", 10, True), ("pdpr", 11, False), ("pdpr", 2, False),
                                                    ("pdprdk", 12, True), ("pdprdk", 13, False), ("pdpd", 5, False),
                                                    ("pkwkk", 2, False)])  # fmt: skip
async def test_a_district_elects_the_seats_its_kind_allows(
    db: asyncpg.Connection, kind: str, seats: int, ok: bool
) -> None:
    await db.execute("DELETE FROM registry.contest")
    await insert_contest(db, kind)
    insert = db.execute(
        "INSERT INTO registry.district (contest, kind, code, name, seats) VALUES ($1, $1, '3101', 'x', $2)", kind, seats
    )
    if ok:
        await insert
    else:
        with pytest.raises(asyncpg.CheckViolationError):
            await insert


async def test_an_area_belongs_to_one_district_of_a_contest_and_never_lies_inside_another(
    db: asyncpg.Connection,
) -> None:
    await db.execute("DELETE FROM registry.contest")
    await insert_contest(db, "pdpr")
    await db.execute(
        "INSERT INTO registry.district (contest, kind, code, name, seats) VALUES ('pdpr', 'pdpr', '3101', 'a', 6),"
        " ('pdpr', 'pdpr', '3102', 'b', 7)"
    )
    await db.execute("INSERT INTO registry.district_area VALUES ('pdpr', '3101', '3171')")
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute("INSERT INTO registry.district_area VALUES ('pdpr', '3102', '3171')")
    kecamatan = await db.fetchval("SELECT min(code) FROM registry.area WHERE parent = '3171'")
    with pytest.raises(asyncpg.CheckViolationError, match=f"area {kecamatan} lies inside area 3171"):
        async with db.transaction():  # checked at commit
            await db.execute("INSERT INTO registry.district_area VALUES ('pdpr', '3102', $1)", kecamatan)
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await db.execute("INSERT INTO registry.district_area VALUES ('pdpr', '3102', '3199')")


async def test_a_load_leaves_statistics_of_what_it_loaded(db: asyncpg.Connection) -> None:
    """The next reload's cascading deletes are planned from these statistics: taken of the small default
    registry with a Pemilu loaded since, they made each cascaded row scan every choice (a reload ran for
    minutes). Autovacuum is kept out, so only the load itself can have taken them."""
    for table in ("contest", "choice", "district", "district_area"):
        await db.execute(f"ALTER TABLE registry.{table} SET (autovacuum_enabled = false)")
    await db.execute("ANALYZE registry.contest, registry.choice, registry.district, registry.district_area")
    await load_registry(db, synthetic_scale=SCALE, seed=SEED, shape=SHAPES["pemilu2024"])
    for table in ("choice", "district", "district_area"):
        rows = await db.fetchval(f"SELECT count(*) FROM registry.{table}")
        estimate = await db.fetchval("SELECT reltuples FROM pg_class WHERE oid = $1::regclass", f"registry.{table}")
        assert rows > 1000 and abs(estimate - rows) <= 0.1 * rows, (table, rows, estimate)
