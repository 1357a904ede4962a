"""ApplyUpdates through the gRPC API: totals at every level against the oracle, replays, and malformed batches."""

from __future__ import annotations

import grpc
import pytest

from suara.v1 import aggregate_pb2
from tests.support.aggregate import Aggregate, apply, update
from tests.support.oracles.aggregate import Oracle, Registry, expected_versions, stored_rows, stored_versions
from tests.support.rpc_errors import bad_fields


async def check(a: Aggregate, oracle: Oracle) -> None:
    assert await stored_rows(a.db, oracle.registry) == oracle.rows()
    assert await stored_versions(a.db) == expected_versions(oracle)


async def test_rolls_up_every_level_with_corrections_and_quarantine(aggregate: Aggregate) -> None:
    registry = await Registry.read(aggregate.db)
    oracle = Oracle(registry)
    a, b, c = registry.tps[0], registry.tps[1], registry.tps[-1]  # two in one desa, one far away
    await check(aggregate, oracle)  # seeded: zero totals, tps_total everywhere
    await apply(aggregate, oracle, [update(registry, a), update(registry, b), update(registry, c, "pdpr")])
    await check(aggregate, oracle)
    await apply(aggregate, oracle, [update(registry, a, version=2, quarantined=True), update(registry, c, "pdpr", 3)])
    await check(aggregate, oracle)
    await apply(aggregate, oracle, [update(registry, a, version=3), update(registry, c, "pdpr", 2)])
    await check(aggregate, oracle)


async def test_a_replayed_batch_changes_nothing(aggregate: Aggregate) -> None:
    """The commit succeeded but the reply was lost: the relay sends the same batch again."""
    registry = await Registry.read(aggregate.db)
    oracle = Oracle(registry)
    batch = [update(registry, t, contest) for t in registry.tps[:20:3] for contest in ("ppwp", "pdpr")]
    first = await aggregate.stub.ApplyUpdates(aggregate_pb2.ApplyUpdatesRequest(updates=batch))
    assert set(first.outcomes) == {aggregate_pb2.UPDATE_OUTCOME_APPLIED}
    for u in batch:
        oracle.send(u)
    rows_before = await stored_rows(aggregate.db, registry)
    changes_before = await aggregate.db.fetchval("SELECT count(*) FROM aggregate.change")
    again = await aggregate.stub.ApplyUpdates(aggregate_pb2.ApplyUpdatesRequest(updates=batch))
    assert list(again.outcomes) == [aggregate_pb2.UPDATE_OUTCOME_DUPLICATE] * len(batch)
    assert again.sequence == first.sequence
    assert await stored_rows(aggregate.db, registry) == rows_before == oracle.rows()
    assert await aggregate.db.fetchval("SELECT count(*) FROM aggregate.change") == changes_before


async def test_duplicates_and_stale_versions_in_one_batch(aggregate: Aggregate) -> None:
    registry = await Registry.read(aggregate.db)
    oracle = Oracle(registry)
    t = registry.tps[5]
    got = await apply(
        aggregate,
        oracle,
        [update(registry, t, version=2), update(registry, t, version=2), update(registry, t, version=1)],
    )
    assert got == ["APPLIED", "DUPLICATE", "STALE"]
    await check(aggregate, oracle)


async def test_corrections_that_cancel_out_leave_their_ancestors_unwritten(aggregate: Aggregate) -> None:
    """Two TPS of one desa corrected in one batch, one vote moving from one to the other: every area
    above them adds up to what it was, so none is rewritten or logged as a change (publish would
    otherwise rewrite five files for nothing); the two TPS are."""
    registry = await Registry.read(aggregate.db)
    oracle = Oracle(registry)
    a, b = next((x, y) for x, y in zip(registry.tps, registry.tps[1:], strict=False) if x[:10] == y[:10])
    first = [update(registry, a), update(registry, b)]
    await apply(aggregate, oracle, first)
    areas_before = await stored_rows(aggregate.db, registry)
    choice = registry.choices["ppwp"][0]
    moved = []
    for u, step in ((first[0], -1), (first[1], +1)):
        v = aggregate_pb2.TpsUpdate()
        v.CopyFrom(u)
        v.version = 2
        v.totals.votes[choice] += step
        v.totals.suara_sah += step
        v.totals.suara_total += step
        moved.append(v)
    assert moved[0].totals.votes[choice] >= 0
    sequence = await aggregate.db.fetchval("SELECT max(sequence) FROM aggregate.change")
    await apply(aggregate, oracle, moved)
    await check(aggregate, oracle)
    assert await stored_rows(aggregate.db, registry) == areas_before == oracle.rows()
    logged = await aggregate.db.fetch("SELECT area FROM aggregate.change WHERE sequence > $1", sequence)
    assert sorted(r["area"] for r in logged) == sorted([a, b])


def _malformed_cases(registry: Registry) -> list[tuple[aggregate_pb2.TpsUpdate, str]]:
    good = registry.tps[0]
    outside_jakarta = next(t for t in registry.tps if not t.startswith("31"))
    cases: list[tuple[aggregate_pb2.TpsUpdate, str]] = []
    u = update(registry, good)
    u.tps = "9999999999999"
    cases.append((u, "updates[1].tps"))
    u = update(registry, good)
    u.tps = "12AB"
    cases.append((u, "updates[1].tps"))
    u = update(registry, good)
    u.contest = "nope"
    cases.append((u, "updates[1].contest"))
    cases.append((update(registry, outside_jakarta, "pkwkp"), "updates[1].tps"))
    u = update(registry, good)
    u.totals.votes["999999"] = 3
    cases.append((u, "updates[1].totals.votes[999999]"))
    u = update(registry, good)
    u.totals.votes[registry.choices["ppwp"][0]] = -1
    cases.append((u, f"updates[1].totals.votes[{registry.choices['ppwp'][0]}]"))
    u = update(registry, good)
    u.totals.suara_sah = -5
    cases.append((u, "updates[1].totals.suara_sah"))
    u = update(registry, good)
    u.totals.pengguna = -1
    cases.append((u, "updates[1].totals.pengguna"))
    u = update(registry, good)
    u.version = 0
    cases.append((u, "updates[1].version"))
    return cases


async def test_every_malformed_update_is_named_and_nothing_is_written(aggregate: Aggregate) -> None:
    registry = await Registry.read(aggregate.db)
    sequence = await aggregate.db.fetchval("SELECT sequence FROM aggregate.head")
    rows = await stored_rows(aggregate.db, registry)
    for bad, field in _malformed_cases(registry):
        batch = [update(registry, registry.tps[3]), bad]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await aggregate.stub.ApplyUpdates(aggregate_pb2.ApplyUpdatesRequest(updates=batch))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_fields(caught.value) == [field], field
        assert await aggregate.db.fetchval("SELECT count(*) FROM aggregate.tps_result") == 0
        assert await aggregate.db.fetchval("SELECT sequence FROM aggregate.head") == sequence
        assert await stored_rows(aggregate.db, registry) == rows


async def test_a_province_scoped_contest_rolls_up_only_where_it_is_held(aggregate: Aggregate) -> None:
    registry = await Registry.read(aggregate.db)
    oracle = Oracle(registry)
    jakarta = registry.held("pkwkp")
    assert jakarta, "the test registry has TPS in DKI Jakarta"
    await apply(aggregate, oracle, [update(registry, t, "pkwkp") for t in jakarta[:5]])
    await check(aggregate, oracle)
    national = await aggregate.db.fetchrow(
        "SELECT tps_total FROM aggregate.area_total WHERE contest = 'pkwkp' AND area = ''"
    )
    assert national["tps_total"] == len(jakarta)
