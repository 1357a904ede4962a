"""Random histories through the real gRPC API against the oracle, at every level.

Each example sends updates to a few (TPS, contest) slots — neighbours in one
desa and TPS far apart — with duplicates, reordering, stale versions,
corrections and quarantine, split into random batches, sent by one caller (its
outcomes are checked one by one) or by two concurrent callers, each to its own
aggregate server on the same database. Afterwards every area row of every level must equal the oracle's.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.aggregate.server import AggregateApp
from suara.v1 import aggregate_pb2
from tests.support.aggregate import BASE_SETTINGS, service_callers
from tests.support.oracles.aggregate import (
    Oracle,
    Registry,
    expected_versions,
    stored_rows,
    stored_versions,
    totals_for,
)

SLOTS = 6
CONTESTS = ("ppwp", "pdpr")


@dataclass(frozen=True)
class Op:
    slot: int
    contest: int
    version: int
    quarantined: bool
    batch: int


ops_strategy = st.lists(
    st.builds(
        Op,
        slot=st.integers(0, SLOTS - 1),
        contest=st.integers(0, len(CONTESTS) - 1),
        version=st.integers(1, 4),
        quarantined=st.booleans(),
        batch=st.integers(0, 5),
    ),
    min_size=1,
    max_size=30,
)


def _slots(registry: Registry) -> list[str]:
    """Neighbours (same desa / kecamatan) and TPS in other provinces, so every level sums several children."""
    tps = registry.tps
    return [tps[0], tps[1], tps[2], tps[len(tps) // 2], tps[len(tps) // 2 + 1], tps[-1]]


async def _reset(db_url: str) -> None:
    """Examples share the test's database; each starts from an empty aggregate (re-seeded at create)."""
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "TRUNCATE aggregate.tps_result, aggregate.area_total, aggregate.area_feed, aggregate.change;"
            "UPDATE aggregate.head SET sequence = 0, registry_load = NULL"
        )
    finally:
        await conn.close()


async def _run(db_url: str, ops: list[Op], concurrent: bool) -> None:
    await _reset(db_url)
    conn = await asyncpg.connect(db_url)
    registry = await Registry.read(conn)
    slots = _slots(registry)
    # Two aggregate workers (servers) on the one database, each fed by its own caller, as two relays
    # or a relay and a federated instance would be: their transactions meet only in PostgreSQL.
    apps = [await AggregateApp.create(BASE_SETTINGS, db_url) for _ in range(2)]
    for app in apps:
        await app.start()
    callers = [await service_callers(conn, app) for app in apps]
    stubs = [c.stub for c in callers]
    oracle = Oracle(registry)
    try:
        # One payload per (slot, contest, version): what a device signs once and the relay may redeliver.
        payloads: dict[tuple[int, int, int], aggregate_pb2.TpsUpdate] = {}
        for op in ops:
            tps, contest = slots[op.slot], CONTESTS[op.contest]
            payloads.setdefault(
                (op.slot, op.contest, op.version),
                aggregate_pb2.TpsUpdate(
                    tps=tps,
                    contest=contest,
                    version=op.version,
                    totals=totals_for(tps, contest, op.version, registry.choices[contest]),
                    quarantined=op.quarantined,
                    failed_checks=["sum_choices_ne_suara_sah"] if op.quarantined else [],
                ),
            )
        batches: dict[int, list[aggregate_pb2.TpsUpdate]] = {}
        for op in ops:
            batches.setdefault(op.batch, []).append(payloads[(op.slot, op.contest, op.version)])

        if not concurrent:
            for batch in batches.values():
                response = await stubs[0].ApplyUpdates(aggregate_pb2.ApplyUpdatesRequest(updates=batch))
                got = [aggregate_pb2.UpdateOutcome.Name(o).removeprefix("UPDATE_OUTCOME_") for o in response.outcomes]
                assert got == [oracle.send(u) for u in batch]
        else:
            # Two relays at once: outcomes depend on the interleaving, the final state must not.
            async def caller(stub_index: int) -> None:
                for number, batch in batches.items():
                    if number % 2 == stub_index:
                        await stubs[stub_index].ApplyUpdates(aggregate_pb2.ApplyUpdatesRequest(updates=batch))

            await asyncio.gather(caller(0), caller(1))
            for batch in batches.values():
                for u in batch:
                    oracle.send(u)

        assert await stored_rows(conn, registry) == oracle.rows()
        assert await stored_versions(conn) == expected_versions(oracle)
        # The head sequence is the last change of anything: an area row, or only a TPS leaf (a
        # quarantined TPS replaced by a higher, still quarantined version changes no total).
        last_change = await conn.fetchval(
            "SELECT greatest((SELECT max(changed_sequence) FROM aggregate.area_total),"
            " (SELECT max(changed_sequence) FROM aggregate.tps_result))"
        )
        assert last_change == await conn.fetchval("SELECT sequence FROM aggregate.head")
    finally:
        for party in callers:
            await party.close()
        for app in apps:
            await app.stop(0.5)
        await conn.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops_strategy, concurrent=st.booleans())
def test_random_histories_roll_up_like_the_oracle(db_url: str, ops: list[Op], concurrent: bool) -> None:
    asyncio.run(_run(db_url, ops, concurrent))
