"""Rekapitulasi berjenjang: officials' signed recaps, versioned, and reconciled with the digital count.

The digital side's oracle is plain Python: the sum of the TPS updates sent
under the area. The recap is whatever the test has the official sign.
"""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest

from services.aggregate.queries import QUERIES
from suara.client.aggregate_stub import aggregate_stub
from suara.election.signing import OfficialKey
from suara.v1 import aggregate_pb2
from tests.support.aggregate import Aggregate
from tests.support.oracles.aggregate import totals_for
from tests.support.rpc_errors import bad_fields

SCALARS = ("suara_sah", "suara_tidak_sah", "suara_total", "dpt", "pengguna")


async def _kecamatan(db: asyncpg.Connection) -> tuple[str, list[str], list[str]]:
    """A kecamatan with at least three TPS (where ppwp is held everywhere), its TPS, and ppwp's choices."""
    row = await db.fetchrow(
        "SELECT left(code, 6) AS k, array_agg(code ORDER BY code) AS tps FROM registry.tps"
        " GROUP BY 1 HAVING count(*) >= 3 ORDER BY 1 LIMIT 1"
    )
    choices = [
        r["id"] for r in await db.fetch("SELECT id FROM registry.choice WHERE contest = 'ppwp' ORDER BY nomor_urut")
    ]
    return row["k"], list(row["tps"]), choices


async def _official(db: asyncpg.Connection, area: str, role: str) -> OfficialKey:
    key = OfficialKey.generate(area, role)
    await db.execute(QUERIES.enroll_official, key.official_id, key.area, key.role, key.public_key, "test")
    return key


def _signed(
    key: OfficialKey, area: str, version: int, totals: aggregate_pb2.Totals
) -> aggregate_pb2.SubmitRecapRequest:
    payload = aggregate_pb2.RecapForm(area=area, contest="ppwp", version=version, totals=totals).SerializeToString()
    return aggregate_pb2.SubmitRecapRequest(
        recap=aggregate_pb2.SignedRecap(payload=payload, signature=key.sign(payload), official_id=key.official_id)
    )


def _sum(parts: list[aggregate_pb2.Totals], choices: list[str]) -> aggregate_pb2.Totals:
    total = aggregate_pb2.Totals(votes=dict.fromkeys(choices, 0))
    for t in parts:
        for c in choices:
            total.votes[c] += t.votes[c]
        for s in SCALARS:
            setattr(total, s, getattr(total, s) + getattr(t, s))
    return total


async def test_reconciliation_goes_incomplete_match_mismatch(aggregate: Aggregate) -> None:
    area, tps, choices = await _kecamatan(aggregate.db)
    ppk = await _official(aggregate.db, area, "ppk")
    sent = {code: totals_for(code, "ppwp", 1, choices) for code in tps}
    hand_count = _sum(list(sent.values()), choices)  # what the PPK plenary counted by hand

    get = aggregate_pb2.GetReconciliationRequest(area=area, contest="ppwp")
    assert (await aggregate.stub.GetReconciliation(get)).status == aggregate_pb2.NO_RECAP

    first = await aggregate.stub.SubmitRecap(_signed(ppk, area, 1, hand_count))
    assert first.outcome == aggregate_pb2.RECAP_ACCEPTED

    updates = [aggregate_pb2.TpsUpdate(tps=code, contest="ppwp", version=1, totals=t) for code, t in sent.items()]
    await aggregate.stub.ApplyUpdates(aggregate_pb2.ApplyUpdatesRequest(updates=updates[:-1]))
    partial = await aggregate.stub.GetReconciliation(get)
    assert partial.status == aggregate_pb2.INCOMPLETE  # one TPS is still out
    assert (partial.tps_reported, partial.tps_total) == (len(tps) - 1, len(tps))
    assert partial.digital == _sum(list(sent.values())[:-1], choices)

    await aggregate.stub.ApplyUpdates(aggregate_pb2.ApplyUpdatesRequest(updates=updates[-1:]))
    complete = await aggregate.stub.GetReconciliation(get)
    assert complete.status == aggregate_pb2.MATCH and not complete.differences
    assert complete.recap == hand_count == complete.digital

    miscount = aggregate_pb2.Totals()
    miscount.CopyFrom(hand_count)
    miscount.votes[choices[1]] += 5
    miscount.suara_sah += 5
    second = await aggregate.stub.SubmitRecap(_signed(ppk, area, 2, miscount))
    assert second.outcome == aggregate_pb2.RECAP_ACCEPTED and second.current_version == 2
    mismatch = await aggregate.stub.GetReconciliation(get)
    assert mismatch.status == aggregate_pb2.MISMATCH
    assert [(d.field, d.difference) for d in mismatch.differences] == [("suara_sah", 5), (f"votes[{choices[1]}]", 5)]
    assert [(h.version, h.official_id) for h in mismatch.history] == [(1, ppk.official_id), (2, ppk.official_id)]

    listed = await aggregate.stub.ListMismatches(aggregate_pb2.ListMismatchesRequest(area=area[:2], contest="ppwp"))
    assert [(i.area, i.status, i.recap_version) for i in listed.items] == [(area, aggregate_pb2.MISMATCH, 2)]


async def test_recap_versions_follow_the_form_rules(aggregate: Aggregate) -> None:
    area, _, choices = await _kecamatan(aggregate.db)
    ppk = await _official(aggregate.db, area, "ppk")
    v2 = _signed(ppk, area, 2, totals_for(area, "ppwp", 2, choices))
    assert (await aggregate.stub.SubmitRecap(v2)).outcome == aggregate_pb2.RECAP_ACCEPTED
    again = await aggregate.stub.SubmitRecap(v2)
    assert (again.outcome, again.current_version) == (aggregate_pb2.RECAP_DUPLICATE, 2)
    older = await aggregate.stub.SubmitRecap(_signed(ppk, area, 1, totals_for(area, "ppwp", 1, choices)))
    assert older.outcome == aggregate_pb2.RECAP_SUPERSEDED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await aggregate.stub.SubmitRecap(_signed(ppk, area, 2, totals_for(area, "ppwp", 2, choices, variant=1)))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS

    # Two different payloads for one new version at once: exactly one is stored.
    a = _signed(ppk, area, 3, totals_for(area, "ppwp", 3, choices, variant=1))
    b = _signed(ppk, area, 3, totals_for(area, "ppwp", 3, choices, variant=2))
    results = await asyncio.gather(aggregate.stub.SubmitRecap(a), aggregate.stub.SubmitRecap(b), return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["AioRpcError", "SubmitRecapResponse"]
    stored = await aggregate.db.fetchval("SELECT payload FROM aggregate.recap WHERE area = $1 AND version = 3", area)
    winner = a if isinstance(results[0], aggregate_pb2.SubmitRecapResponse) else b
    assert bytes(stored) == winner.recap.payload
    assert await aggregate.db.fetchval("SELECT count(*) FROM aggregate.recap") == 3


async def test_only_the_areas_own_official_may_recap(aggregate: Aggregate) -> None:
    area, _, choices = await _kecamatan(aggregate.db)
    other = await aggregate.db.fetchval("SELECT code FROM registry.area WHERE level = 3 AND code <> $1 LIMIT 1", area)
    stranger = await _official(aggregate.db, other, "ppk")
    unknown = OfficialKey.generate(area, "ppk")  # never enrolled
    totals = totals_for(area, "ppwp", 1, choices)

    async def refused(request: aggregate_pb2.SubmitRecapRequest) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await aggregate.stub.SubmitRecap(request)
        return err.value.code()

    assert await refused(_signed(unknown, area, 1, totals)) == grpc.StatusCode.UNAUTHENTICATED
    assert await refused(_signed(stranger, area, 1, totals)) == grpc.StatusCode.PERMISSION_DENIED
    forged = _signed(stranger, other, 1, totals)
    forged.recap.signature = unknown.sign(forged.recap.payload)
    assert await refused(forged) == grpc.StatusCode.UNAUTHENTICATED
    mine = await _official(aggregate.db, area, "ppk")
    bad = aggregate_pb2.Totals()
    bad.CopyFrom(totals)
    bad.suara_sah = -1
    del bad.votes[choices[0]]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await aggregate.stub.SubmitRecap(_signed(mine, area, 1, bad))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == [f"totals.votes[{choices[0]}]", "totals.suara_sah"]
    assert await aggregate.db.fetchval("SELECT count(*) FROM aggregate.recap") == 0


async def test_reading_reconciliation_needs_a_reader_credential(aggregate: Aggregate) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{aggregate.app.port}") as bare:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await aggregate_stub(bare).GetReconciliation(
                aggregate_pb2.GetReconciliationRequest(area="", contest="ppwp")
            )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
