"""GetArea and Changes: the contract publish relies on."""

from __future__ import annotations

from datetime import UTC

import grpc
import pytest

from suara.v1 import aggregate_pb2
from tests.support.aggregate import Aggregate, apply, update
from tests.support.oracles.aggregate import Oracle, Registry, stored_rows


async def _leaf_snapshot(a: Aggregate) -> dict[tuple[str, str], tuple[int, bool]]:
    rows = await a.db.fetch("SELECT tps, contest, version, quarantined FROM aggregate.tps_result")
    return {(r["contest"], r["tps"]): (r["version"], r["quarantined"]) for r in rows}


async def test_get_area_at_every_level(aggregate: Aggregate) -> None:
    registry = await Registry.read(aggregate.db)
    oracle = Oracle(registry)
    # Two TPS of one desa: one reported, one quarantined.
    tps, neighbour = next((a, b) for a, b in zip(registry.tps, registry.tps[1:], strict=False) if a[:10] == b[:10])
    await apply(aggregate, oracle, [update(registry, tps, version=4), update(registry, neighbour, quarantined=True)])
    expected = oracle.rows()
    for area in ("", tps[:2], tps[:4], tps[:6], tps[:10]):
        view = (await aggregate.stub.GetArea(aggregate_pb2.GetAreaRequest(area=area, contest="ppwp"))).view
        row = expected[("ppwp", area)]
        assert view.area.area == area
        assert dict(view.area.totals.votes) == row.votes
        assert view.area.totals.suara_sah == row.suara_sah
        assert (view.area.tps_total, view.area.tps_reported, view.area.tps_quarantined) == (
            row.tps_total,
            row.tps_reported,
            row.tps_quarantined,
        )
        assert view.sequence == await aggregate.db.fetchval("SELECT sequence FROM aggregate.head")
        changed_at = await aggregate.db.fetchval(
            "SELECT changed_at FROM aggregate.area_total WHERE contest = 'ppwp' AND area = $1", area
        )
        assert view.last_change_at.ToDatetime(UTC) == changed_at  # to the microsecond
        # The children sum to the area.
        assert sum(c.totals.suara_sah for c in view.children) == view.area.totals.suara_sah
        assert sum(c.tps_total for c in view.children) == view.area.tps_total
    national = (await aggregate.stub.GetArea(aggregate_pb2.GetAreaRequest(area="", contest="ppwp"))).view
    assert national.area.name == "Indonesia"
    assert len(national.children) == 38
    desa = (await aggregate.stub.GetArea(aggregate_pb2.GetAreaRequest(area=tps[:10], contest="ppwp"))).view
    versions = {c.area: c.version for c in desa.children}
    assert versions[tps] == 4
    assert versions[neighbour] == 1
    assert set(versions) == {t for t in registry.tps if t.startswith(tps[:10])}
    flagged = next(c for c in desa.children if c.area == neighbour)
    assert flagged.tps_quarantined == 1 and flagged.totals.suara_sah == 0  # a quarantined TPS adds nothing
    one = (await aggregate.stub.GetArea(aggregate_pb2.GetAreaRequest(area=tps, contest="ppwp"))).view
    assert one.area.version == 4 and dict(one.area.totals.votes) == dict(oracle.current[(tps, "ppwp")].totals.votes)


@pytest.mark.parametrize(
    ("area", "contest", "code"),
    [
        ("00", "ppwp", grpc.StatusCode.NOT_FOUND),
        ("1101019999", "ppwp", grpc.StatusCode.NOT_FOUND),
        ("0000000000000", "ppwp", grpc.StatusCode.NOT_FOUND),
        ("11", "pkwkp", grpc.StatusCode.NOT_FOUND),  # held only in DKI Jakarta
        ("1x", "ppwp", grpc.StatusCode.INVALID_ARGUMENT),
        ("11", "nope", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_get_area_errors(aggregate: Aggregate, area: str, contest: str, code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await aggregate.stub.GetArea(aggregate_pb2.GetAreaRequest(area=area, contest=contest))
    assert caught.value.code() == code


async def test_changes_name_exactly_what_changed(aggregate: Aggregate) -> None:
    registry = await Registry.read(aggregate.db)
    oracle = Oracle(registry)
    last = (await aggregate.stub.Changes(aggregate_pb2.ChangesRequest(since=0))).sequence
    rounds = [
        [update(registry, registry.tps[0]), update(registry, registry.tps[-1], "pdpr")],
        [update(registry, registry.tps[0])],  # a duplicate: nothing changes
        [update(registry, registry.tps[0], version=2, quarantined=True)],
        [update(registry, registry.tps[1]), update(registry, registry.tps[0], version=1)],
    ]
    for batch in rounds:
        areas_before = await stored_rows(aggregate.db, registry)
        leaves_before = await _leaf_snapshot(aggregate)
        await apply(aggregate, oracle, batch)
        areas_after = await stored_rows(aggregate.db, registry)
        leaves_after = await _leaf_snapshot(aggregate)
        changed = {k for k in areas_after if areas_after[k] != areas_before.get(k)}
        changed |= {k for k in leaves_after if leaves_after[k] != leaves_before.get(k)}
        response = await aggregate.stub.Changes(aggregate_pb2.ChangesRequest(since=last))
        assert {(c.contest, c.area) for c in response.changes} == changed
        assert response.sequence >= last
        assert all(c.sequence > last for c in response.changes)
        if changed:
            assert response.sequence > last
        else:
            assert response.sequence == last
        last = response.sequence


async def test_changes_pages_end_on_whole_sequences(aggregate: Aggregate) -> None:
    registry = await Registry.read(aggregate.db)
    oracle = Oracle(registry)
    for t in registry.tps[:6]:
        await apply(aggregate, oracle, [update(registry, t)])  # one sequence each, ~6 rows per sequence
    everything = (await aggregate.stub.Changes(aggregate_pb2.ChangesRequest(since=1))).changes
    since, seen = 1, list[aggregate_pb2.Change]()
    while True:
        page = await aggregate.stub.Changes(aggregate_pb2.ChangesRequest(since=since, limit=4))
        if not page.changes:
            break
        seen.extend(page.changes)
        since = page.changes[-1].sequence
    assert [(c.sequence, c.contest, c.area) for c in seen] == [(c.sequence, c.contest, c.area) for c in everything]
    sequences = [c.sequence for c in everything]
    assert sequences == sorted(sequences)
