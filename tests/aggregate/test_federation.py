"""Federation: a province instance P pushes its province rows to a national instance N (two databases)."""

from __future__ import annotations

import asyncpg

from suara.v1 import aggregate_pb2
from tests.support.aggregate import Aggregate, apply, start_aggregate, update
from tests.support.oracles.aggregate import Oracle, Registry, stored_rows


async def _push(p: Aggregate, n: Aggregate, since: int, fed: list[str]) -> tuple[int, list[str]]:
    """What a federation relay does: follow P's changes, send each changed row of P's provinces to N."""
    changes = await p.stub.Changes(aggregate_pb2.ChangesRequest(since=since))
    provinces = sorted({(c.contest, c.area) for c in changes.changes if c.area in fed})
    updates = []
    for contest, area in provinces:
        row = (await p.stub.GetArea(aggregate_pb2.GetAreaRequest(area=area, contest=contest))).view.area
        updates.append(
            aggregate_pb2.AreaUpdate(
                area=area,
                contest=contest,
                version=row.changed_sequence,
                totals=row.totals,
                tps_total=row.tps_total,
                tps_reported=row.tps_reported,
                tps_quarantined=row.tps_quarantined,
            )
        )
    response = await n.stub.ApplyAreaUpdates(aggregate_pb2.ApplyAreaUpdatesRequest(source="P", updates=updates))
    return changes.sequence, [
        aggregate_pb2.UpdateOutcome.Name(o).removeprefix("UPDATE_OUTCOME_") for o in response.outcomes
    ]


async def test_a_national_instance_fed_by_a_province_instance(aggregate: Aggregate, other_db_url: str) -> None:
    p = aggregate
    n_db = await asyncpg.connect(other_db_url)
    n = await start_aggregate(other_db_url, n_db)
    try:
        registry = await Registry.read(p.db)
        provinces = sorted({t[:2] for t in registry.tps})
        fed, own = provinces[:3], provinces[3:]
        oracle = Oracle(registry)  # the truth: what P got for the fed provinces, what N got for the rest
        p_oracle, n_oracle = Oracle(registry), Oracle(registry)

        fed_tps = [t for t in registry.tps if t[:2] in fed]
        own_tps = [t for t in registry.tps if t[:2] in own]
        p_batch = [update(registry, t, c) for t in fed_tps[::2] for c in ("ppwp", "pdpr")]
        await apply(p, p_oracle, p_batch)
        await apply(n, n_oracle, [update(registry, t) for t in own_tps[::5]])
        # N also hears of a TPS inside a fed province: the feed, not this leaf, is that province's truth.
        await apply(n, n_oracle, [update(registry, fed_tps[1], version=9)])
        for u in p_batch:
            oracle.send(u)
        for t in own_tps[::5]:
            oracle.send(update(registry, t))

        since, outcomes = await _push(p, n, 0, fed)
        assert outcomes and set(outcomes) == {"APPLIED"}
        await _check(n_db, registry, oracle, fed, own)

        # A correction and a quarantine at P, pushed again; then the same push replayed.
        correction = [
            update(registry, fed_tps[0], version=2),
            update(registry, fed_tps[2], version=3, quarantined=True),
        ]
        await apply(p, p_oracle, correction)
        for u in correction:
            oracle.send(u)
        sequence_before = await n_db.fetchval("SELECT sequence FROM aggregate.head")
        _, outcomes = await _push(p, n, since, fed)
        assert set(outcomes) == {"APPLIED"}
        await _check(n_db, registry, oracle, fed, own)
        assert await n_db.fetchval("SELECT sequence FROM aggregate.head") == sequence_before + 1

        _, outcomes = await _push(p, n, since, fed)  # the reply was lost: the relay resends
        assert set(outcomes) == {"DUPLICATE"}
        assert await n_db.fetchval("SELECT sequence FROM aggregate.head") == sequence_before + 1
        await _check(n_db, registry, oracle, fed, own)

        # An older push arriving late is stale and changes nothing.
        stale = aggregate_pb2.AreaUpdate(area=fed[0], contest="ppwp", version=1, tps_total=1)
        response = await n.stub.ApplyAreaUpdates(aggregate_pb2.ApplyAreaUpdatesRequest(source="P", updates=[stale]))
        assert list(response.outcomes) == [aggregate_pb2.UPDATE_OUTCOME_STALE]
        await _check(n_db, registry, oracle, fed, own)
    finally:
        await n.close()
        await n_db.close()


async def _check(n_db: asyncpg.Connection, registry: Registry, oracle: Oracle, fed: list[str], own: list[str]) -> None:
    expected = oracle.rows()
    stored = await stored_rows(n_db, registry)
    for contest in registry.scope:
        assert stored[(contest, "")] == expected[(contest, "")], contest
        for province in fed + own:
            if (contest, province) in expected:
                assert stored[(contest, province)] == expected[(contest, province)], (contest, province)
    # Below the fed provinces N's own rows are not the truth; everywhere else every level must match.
    for key, row in expected.items():
        if key[1][:2] not in fed:
            assert stored[key] == row, key


async def test_a_bad_area_update_is_refused_alone(aggregate: Aggregate) -> None:
    registry = await Registry.read(aggregate.db)
    provinces = sorted({t[:2] for t in registry.tps})
    held = {p: sum(t.startswith(p) for t in registry.held("ppwp")) for p in provinces}
    choices = registry.choices["ppwp"]

    def fed(area: str, *, votes: int = 10, reported: int = 1, total: int | None = None) -> aggregate_pb2.AreaUpdate:
        return aggregate_pb2.AreaUpdate(
            area=area, contest="ppwp", version=1, tps_total=held[area] if total is None else total,
            tps_reported=reported, totals=aggregate_pb2.Totals(votes={choices[0]: votes}, suara_sah=votes),
        )  # fmt: skip

    updates = [
        fed(provinces[0]),
        fed(provinces[1], votes=2**63 - 1),  # the poisoned subtree
        fed(provinces[2], votes=10_001),  # one reported TPS counts no more than one form can
        fed(provinces[3], total=held[provinces[3]] + 1),  # more TPS than this registry has there
        fed("99", total=1),  # no such province here
    ]
    response = await aggregate.stub.ApplyAreaUpdates(aggregate_pb2.ApplyAreaUpdatesRequest(source="P", updates=updates))
    names = [aggregate_pb2.UpdateOutcome.Name(o).removeprefix("UPDATE_OUTCOME_") for o in response.outcomes]
    assert names == ["APPLIED", "REFUSED", "REFUSED", "REFUSED", "REFUSED"]
    assert [(r.index, list(r.fields)) for r in response.refusals] == [
        (1, ["updates[1].totals.suara_sah", f"updates[1].totals.votes[{choices[0]}]"]),
        (2, ["updates[2].totals.suara_sah", f"updates[2].totals.votes[{choices[0]}]"]),
        (3, ["updates[3].tps_total"]),
        (4, ["updates[4].area"]),
    ]
    national = await aggregate.db.fetchval("SELECT votes FROM aggregate.area_total WHERE contest='ppwp' AND area=''")
    assert national[0] == 10, "only the good subtree counts"
