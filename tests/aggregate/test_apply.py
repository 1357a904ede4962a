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


def _bad_cases(registry: Registry) -> list[tuple[aggregate_pb2.TpsUpdate, list[str]]]:
    """Updates no form tally accepted can become, each with the fields its refusal must name."""
    good = registry.tps[0]
    outside_jakarta = next(t for t in registry.tps if not t.startswith("31"))
    first = registry.choices["ppwp"][0]
    cases: list[tuple[aggregate_pb2.TpsUpdate, list[str]]] = []

    def case(change: object = None, *fields: str, base: aggregate_pb2.TpsUpdate | None = None) -> None:
        u = base or update(registry, good)
        if callable(change):
            change(u)
        cases.append((u, [f"updates[1].{f}" for f in fields]))

    case(lambda u: setattr(u, "tps", "9999999999999"), "tps")
    case(lambda u: setattr(u, "tps", "12AB"), "tps")
    case(lambda u: setattr(u, "contest", "nope"), "contest")
    case(None, "tps", base=update(registry, outside_jakarta, "pkwkp"))
    case(lambda u: u.totals.votes.__setitem__("999999", 3), "totals.votes[999999]")
    case(lambda u: u.totals.votes.__setitem__(first, -1), f"totals.votes[{first}]")
    case(lambda u: setattr(u.totals, "suara_sah", -5), "totals.suara_sah")
    case(lambda u: setattr(u.totals, "pengguna", -1), "totals.pengguna")
    case(lambda u: setattr(u, "version", 0), "version")
    case(lambda u: setattr(u, "version", 2**31), "version")

    def poisoned(u: aggregate_pb2.TpsUpdate) -> None:  # the finding: 9.22e18 votes for one choice
        u.totals.votes[first] = 2**63 - 1

    case(poisoned, f"totals.votes[{first}]")

    def consistent_but_huge(u: aggregate_pb2.TpsUpdate) -> None:  # adds up, but no TPS holds 5,000 voters
        u.totals.votes[first] += 5000
        u.totals.suara_sah += 5000
        u.totals.suara_total += 5000
        u.totals.pengguna += 5000

    case(consistent_but_huge, f"totals.votes[{first}]", "totals.suara_sah", "totals.suara_total", "totals.pengguna")
    case(lambda u: setattr(u.totals, "suara_sah", u.totals.suara_sah + 1), "totals.suara_sah", "totals.suara_total")
    case(lambda u: setattr(u.totals, "pengguna", u.totals.suara_total - 1), "totals.suara_total")
    quarantined = update(registry, good, quarantined=True)
    quarantined.failed_checks[:] = ['<img src=x onerror="alert(1)">']
    case(None, "failed_checks[0]", base=quarantined)
    quarantined = update(registry, good, quarantined=True)
    quarantined.failed_checks.extend(["sah_plus_tidak_sah_ne_suara_total"] * 1000)
    case(None, "failed_checks", base=quarantined)
    quarantined = update(registry, good, quarantined=True)
    quarantined.failed_checks.append("sah_plus_tidak_sah_ne_suara_total")
    case(None, "failed_checks[1]", base=quarantined)
    quarantined = update(registry, good, quarantined=True)
    quarantined.totals.suara_tidak_sah = 10_001  # quarantined counts nothing, but is shown: a form's bound
    case(None, "totals.suara_tidak_sah", base=quarantined)
    return cases


async def test_each_bad_update_is_refused_alone_and_the_rest_applies(aggregate: Aggregate) -> None:
    registry = await Registry.read(aggregate.db)
    oracle = Oracle(registry)
    neighbour = registry.tps[3]
    for n, (bad, fields) in enumerate(_bad_cases(registry), start=1):
        good = update(registry, neighbour, version=n)
        response = await aggregate.stub.ApplyUpdates(aggregate_pb2.ApplyUpdatesRequest(updates=[good, bad]))
        assert list(response.outcomes) == [
            aggregate_pb2.UPDATE_OUTCOME_APPLIED,
            aggregate_pb2.UPDATE_OUTCOME_REFUSED,
        ], fields
        assert [(r.index, list(r.fields)) for r in response.refusals] == [(1, fields)]
        assert len(response.refusals[0].reason) < 2000, "a refusal's reason stays short"
        oracle.send(good)
        await check(aggregate, oracle)  # the good one counted, nothing of the bad one anywhere
    later = update(registry, registry.tps[0], version=1)  # the refused TPS itself is not blocked
    await apply(aggregate, oracle, [later])
    await check(aggregate, oracle)


async def test_a_batch_too_large_is_refused_whole(aggregate: Aggregate) -> None:
    registry = await Registry.read(aggregate.db)
    batch = [update(registry, registry.tps[0])] * 10_001
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await aggregate.stub.ApplyUpdates(aggregate_pb2.ApplyUpdatesRequest(updates=batch))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(caught.value) == ["updates"]
    assert await aggregate.db.fetchval("SELECT count(*) FROM aggregate.tps_result") == 0


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
