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
from tests.support.factories import TEST_ELECTION
from tests.support.oracles.aggregate import totals_for
from tests.support.pki import suite_pki
from tests.support.rpc_errors import bad_fields, violations

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
    key: OfficialKey, area: str, version: int, totals: aggregate_pb2.Totals, election_id: str = TEST_ELECTION
) -> aggregate_pb2.SubmitRecapRequest:
    payload = aggregate_pb2.RecapForm(
        area=area, contest="ppwp", version=version, totals=totals, election_id=election_id
    ).SerializeToString()
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
    assert (
        await aggregate.stub.GetReconciliation(get)
    ).reconciliation.status == aggregate_pb2.RECONCILIATION_STATUS_NO_RECAP

    first = await aggregate.stub.SubmitRecap(_signed(ppk, area, 1, hand_count))
    assert first.outcome == aggregate_pb2.RECAP_OUTCOME_ACCEPTED

    updates = [aggregate_pb2.TpsUpdate(tps=code, contest="ppwp", version=1, totals=t) for code, t in sent.items()]
    await aggregate.stub.ApplyUpdates(aggregate_pb2.ApplyUpdatesRequest(updates=updates[:-1]))
    partial = (await aggregate.stub.GetReconciliation(get)).reconciliation
    assert partial.status == aggregate_pb2.RECONCILIATION_STATUS_INCOMPLETE  # one TPS is still out
    assert (partial.tps_reported, partial.tps_total) == (len(tps) - 1, len(tps))
    assert partial.digital == _sum(list(sent.values())[:-1], choices)

    await aggregate.stub.ApplyUpdates(aggregate_pb2.ApplyUpdatesRequest(updates=updates[-1:]))
    complete = (await aggregate.stub.GetReconciliation(get)).reconciliation
    assert complete.status == aggregate_pb2.RECONCILIATION_STATUS_MATCH and not complete.differences
    assert complete.recap == hand_count == complete.digital

    miscount = aggregate_pb2.Totals()
    miscount.CopyFrom(hand_count)
    miscount.votes[choices[1]] += 5
    miscount.suara_sah += 5
    second = await aggregate.stub.SubmitRecap(_signed(ppk, area, 2, miscount))
    assert second.outcome == aggregate_pb2.RECAP_OUTCOME_ACCEPTED and second.current_version == 2
    mismatch = (await aggregate.stub.GetReconciliation(get)).reconciliation
    assert mismatch.status == aggregate_pb2.RECONCILIATION_STATUS_MISMATCH
    assert [(d.field, d.difference) for d in mismatch.differences] == [("suara_sah", 5), (f"votes[{choices[1]}]", 5)]
    assert [(h.version, h.official_id) for h in mismatch.history] == [(1, ppk.official_id), (2, ppk.official_id)]

    listed = await aggregate.stub.ListMismatches(aggregate_pb2.ListMismatchesRequest(area=area[:2], contest="ppwp"))
    assert [(i.area, i.status, i.recap_version) for i in listed.items] == [
        (area, aggregate_pb2.RECONCILIATION_STATUS_MISMATCH, 2)
    ]


async def test_recap_versions_follow_the_form_rules(aggregate: Aggregate) -> None:
    area, _, choices = await _kecamatan(aggregate.db)
    ppk = await _official(aggregate.db, area, "ppk")
    v2 = _signed(ppk, area, 2, totals_for(area, "ppwp", 2, choices))
    assert (await aggregate.stub.SubmitRecap(v2)).outcome == aggregate_pb2.RECAP_OUTCOME_ACCEPTED
    again = await aggregate.stub.SubmitRecap(v2)
    assert (again.outcome, again.current_version) == (aggregate_pb2.RECAP_OUTCOME_DUPLICATE, 2)
    older = await aggregate.stub.SubmitRecap(_signed(ppk, area, 1, totals_for(area, "ppwp", 1, choices)))
    assert older.outcome == aggregate_pb2.RECAP_OUTCOME_SUPERSEDED
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
    """On the public listener (TLS, no client certificate) a reader's method is refused, naming where to go."""
    async with suite_pki().channel(f"127.0.0.1:{aggregate.app.port}") as bare:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await aggregate_stub(bare).GetReconciliation(
                aggregate_pb2.GetReconciliationRequest(area="", contest="ppwp")
            )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert f"127.0.0.1:{aggregate.app.internal_port}" in (err.value.details() or "")


async def test_an_official_submits_a_recap_on_the_public_listener_without_a_certificate(aggregate: Aggregate) -> None:
    """Officials are many and their signed recap is their proof: no client certificate is needed for it."""
    area, tps, choices = await _kecamatan(aggregate.db)
    ppk = await _official(aggregate.db, area, "ppk")
    hand_count = _sum([totals_for(code, "ppwp", 1, choices) for code in tps], choices)
    async with suite_pki().channel(f"127.0.0.1:{aggregate.app.port}") as public:
        reply = await aggregate_stub(public).SubmitRecap(_signed(ppk, area, 1, hand_count))
    assert reply.outcome == aggregate_pb2.RECAP_OUTCOME_ACCEPTED
    assert await aggregate.db.fetchval("SELECT count(*) FROM aggregate.recap") == 1


async def _list_all(aggregate: Aggregate, request: aggregate_pb2.ListMismatchesRequest) -> list[list[str]]:
    pages: list[list[str]] = []
    while True:
        reply = await aggregate.stub.ListMismatches(request)
        pages.append([item.area for item in reply.items])
        if not reply.next_page_token:
            return pages
        request.page_token = reply.next_page_token


async def test_list_mismatches_pages_through_exactly_the_differing_areas(aggregate: Aggregate) -> None:
    rows = await aggregate.db.fetch(
        "SELECT left(code, 6) AS k, array_agg(code ORDER BY code) AS tps FROM registry.tps"
        " GROUP BY 1 HAVING count(*) >= 2 ORDER BY 1 LIMIT 5"
    )
    choices = [
        r["id"]
        for r in await aggregate.db.fetch("SELECT id FROM registry.choice WHERE contest = 'ppwp' ORDER BY nomor_urut")
    ]
    # Per kecamatan: are all its TPS in, and what the PPK recaps (the sum of all its TPS, or of those in, ± 5).
    plan = {"match": (True, 0), "mismatch": (True, 5), "early": (False, 0), "partial": (False, None), "off": (True, 7)}
    kecamatan = {name: (r["k"], list(r["tps"])) for name, r in zip(plan, rows, strict=True)}
    updates, officials = [], {}
    for name, (complete, off) in plan.items():
        area, tps = kecamatan[name]
        sent = {code: totals_for(code, "ppwp", 1, choices) for code in tps}
        counted = tps if complete else tps[:-1]
        updates += [aggregate_pb2.TpsUpdate(tps=c, contest="ppwp", version=1, totals=sent[c]) for c in counted]
        recap = _sum([sent[c] for c in (tps if off is not None else counted)], choices)  # "partial": what is in
        recap.suara_tidak_sah += off or 0
        officials[name] = await _official(aggregate.db, area, "ppk")
        await aggregate.stub.SubmitRecap(_signed(officials[name], area, 1, recap))
    await aggregate.stub.ApplyUpdates(aggregate_pb2.ApplyUpdatesRequest(updates=updates))
    # The plain-Python oracle: complete and differing; with include_incomplete, also incomplete and differing.
    mismatched = sorted(kecamatan[n][0] for n in ("mismatch", "off"))
    differing = sorted(kecamatan[n][0] for n in ("mismatch", "off", "early"))

    for include_incomplete, expected in ((False, mismatched), (True, differing)):
        for size in range(1, len(expected) + 2):
            request = aggregate_pb2.ListMismatchesRequest(
                contest="ppwp", include_incomplete=include_incomplete, page_size=size
            )
            pages = await _list_all(aggregate, request)
            assert [a for page in pages for a in page] == expected, (include_incomplete, size)
            assert all(len(page) == size for page in pages[:-1]) and len(pages[-1]) <= size
    province = kecamatan["mismatch"][0][:2]
    under = await _list_all(aggregate, aggregate_pb2.ListMismatchesRequest(area=province, contest="ppwp"))
    assert under == [[a for a in mismatched if a.startswith(province)]]

    # A recap that starts to differ between pages, before the cursor, is not listed late; nothing repeats.
    request = aggregate_pb2.ListMismatchesRequest(contest="ppwp", page_size=1)
    first = await aggregate.stub.ListMismatches(request)
    assert [i.area for i in first.items] == mismatched[:1]
    match_area, match_tps = kecamatan["match"]
    assert match_area < mismatched[0]  # the first kecamatan, by the plan's order
    wrong = _sum([totals_for(c, "ppwp", 1, choices) for c in match_tps], choices)
    wrong.suara_sah += 1
    await aggregate.stub.SubmitRecap(_signed(officials["match"], match_area, 2, wrong))
    request.page_token = first.next_page_token
    assert [a for page in await _list_all(aggregate, request) for a in page] == mismatched[1:]

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await aggregate.stub.ListMismatches(
            aggregate_pb2.ListMismatchesRequest(
                contest="ppwp", include_incomplete=True, page_token=first.next_page_token
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == ["page_token"]


async def test_a_recap_with_unknown_fields_is_refused_naming_them(aggregate: Aggregate) -> None:
    area, tps, choices = await _kecamatan(aggregate.db)
    ppk = await _official(aggregate.db, area, "ppk")
    totals = _sum([totals_for(code, "ppwp", 1, choices) for code in tps], choices)
    request = _signed(ppk, area, 1, totals)
    payload = request.recap.payload + bytes([0xAA, 0x1F, 3]) + b"abc"  # field 501, length-delimited
    request.recap.payload, request.recap.signature = payload, ppk.sign(payload)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await aggregate.stub.SubmitRecap(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == ["recap.payload"]
    assert "#501" in violations(err.value)["recap.payload"]
    assert await aggregate.db.fetchval("SELECT count(*) FROM aggregate.recap") == 0


async def test_a_recap_of_another_election_is_refused_naming_both(aggregate: Aggregate) -> None:
    area, tps, choices = await _kecamatan(aggregate.db)
    ppk = await _official(aggregate.db, area, "ppk")
    totals = _sum([totals_for(code, "ppwp", 1, choices) for code in tps], choices)
    for other in ("gladi-2024", ""):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await aggregate.stub.SubmitRecap(_signed(ppk, area, 1, totals, election_id=other))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert bad_fields(err.value) == ["election_id"]
        said = violations(err.value)["election_id"]
        assert repr(TEST_ELECTION) in said and (repr(other) if other else "no election") in said
    assert await aggregate.db.fetchval("SELECT count(*) FROM aggregate.recap") == 0
    accepted = await aggregate.stub.SubmitRecap(_signed(ppk, area, 1, totals))
    assert accepted.outcome == aggregate_pb2.RECAP_OUTCOME_ACCEPTED


async def test_recap_versions_are_capped(aggregate: Aggregate) -> None:
    area, tps, choices = await _kecamatan(aggregate.db)
    ppk = await _official(aggregate.db, area, "ppk")
    totals = _sum([totals_for(code, "ppwp", 1, choices) for code in tps], choices)
    top = await aggregate.stub.SubmitRecap(_signed(ppk, area, 100, totals))
    assert top.outcome == aggregate_pb2.RECAP_OUTCOME_ACCEPTED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await aggregate.stub.SubmitRecap(_signed(ppk, area, 2**63 - 1, totals))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == ["version"]
