"""Each outcome of the Versions table (docs/domain.md), through the real API and database."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from suara.v1 import tally_pb2
from tests.support.factories import consistent_form, signed
from tests.support.tally import Tally


async def test_accepted_form_is_stored_with_receipt_and_outbox_row(tally: Tally) -> None:
    st = await tally.station()
    form = consistent_form(st.tps, "ppwp", tally.contests["ppwp"])
    request = signed(st.key, form)
    response = await tally.stub.Submit(request)

    assert response.outcome == tally_pb2.OUTCOME_ACCEPTED
    assert response.current_version == 1
    assert list(response.failed_checks) == []
    import hashlib

    assert response.receipt.payload_sha256 == hashlib.sha256(request.form.payload).hexdigest()
    assert response.receipt.chain_position == 1
    row = await tally.db.fetchrow("SELECT * FROM tally.submission WHERE id = $1::uuid", response.receipt.submission_id)
    assert bytes(row["payload"]) == request.form.payload
    assert bytes(row["chain_hash"]).hex() == response.receipt.chain_hash
    outbox = await tally.db.fetchrow("SELECT * FROM tally.outbox")
    assert (outbox["tps"], outbox["contest"], outbox["version"], outbox["quarantined"]) == (
        st.tps,
        "ppwp",
        1,
        False,
    )


async def test_inconsistent_form_is_stored_quarantined(tally: Tally) -> None:
    st = await tally.station()
    form = consistent_form(st.tps, "ppwp", tally.contests["ppwp"])
    form.votes[tally.contests["ppwp"][0]] += 1  # sum of choices no longer equals suara_sah
    response = await tally.stub.Submit(signed(st.key, form))
    assert response.outcome == tally_pb2.OUTCOME_QUARANTINED
    assert list(response.failed_checks) == ["sum_choices_ne_suara_sah"]
    outbox = await tally.db.fetchrow("SELECT quarantined, failed_checks FROM tally.outbox")
    assert outbox["quarantined"] is True
    assert outbox["failed_checks"] == ["sum_choices_ne_suara_sah"]


async def test_duplicate_returns_the_original_receipt_and_changes_nothing(tally: Tally) -> None:
    st = await tally.station()
    request = signed(st.key, consistent_form(st.tps, "ppwp", tally.contests["ppwp"]))
    first = await tally.stub.Submit(request)
    again = await tally.stub.Submit(request)
    assert again.outcome == tally_pb2.OUTCOME_DUPLICATE
    assert again.receipt == first.receipt
    assert await tally.count("submission") == 1
    assert await tally.count("outbox") == 1


async def test_conflict_keeps_the_original_and_raises_an_alarm(tally: Tally) -> None:
    st = await tally.station()
    original = consistent_form(st.tps, "ppwp", tally.contests["ppwp"], seed=1)
    other = consistent_form(st.tps, "ppwp", tally.contests["ppwp"], seed=2)
    assert original.SerializeToString() != other.SerializeToString()
    first = await tally.stub.Submit(signed(st.key, original))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tally.stub.Submit(signed(st.key, other))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first.receipt.submission_id in (err.value.details() or "")
    stored = await tally.db.fetchval("SELECT payload FROM tally.submission")
    assert bytes(stored) == original.SerializeToString()
    alarm = await tally.db.fetchrow("SELECT kind, tps, version FROM tally.alarm")
    assert tuple(alarm) == ("CONFLICT", st.tps, 1)


async def test_older_version_is_superseded_kept_for_audit_and_not_current(tally: Tally) -> None:
    st = await tally.station()
    choices = tally.contests["ppwp"]
    v2 = await tally.stub.Submit(signed(st.key, consistent_form(st.tps, "ppwp", choices, version=2)))
    v1 = await tally.stub.Submit(signed(st.key, consistent_form(st.tps, "ppwp", choices, version=1)))
    assert v2.outcome == tally_pb2.OUTCOME_ACCEPTED
    assert v1.outcome == tally_pb2.OUTCOME_SUPERSEDED
    assert v1.current_version == 2
    assert await tally.db.fetchval("SELECT version FROM tally.current") == 2
    assert await tally.db.fetchval("SELECT array_agg(version ORDER BY id) FROM tally.outbox") == [2]
    history = await tally.admin.ListSubmissions(tally_pb2.ListSubmissionsRequest(tps=st.tps, contest="ppwp"))
    assert [(s.version, s.status) for s in history.submissions] == [
        (1, tally_pb2.SUBMISSION_STATUS_HISTORY),
        (2, tally_pb2.SUBMISSION_STATUS_CURRENT),
    ]


async def test_higher_version_replaces_and_history_shows_it(tally: Tally) -> None:
    st = await tally.station()
    choices = tally.contests["ppwp"]
    bad = consistent_form(st.tps, "ppwp", choices, version=1)
    bad.suara_total += 1
    first = await tally.stub.Submit(signed(st.key, bad))
    fixed = await tally.stub.Submit(signed(st.key, consistent_form(st.tps, "ppwp", choices, version=2)))
    assert (first.outcome, fixed.outcome) == (tally_pb2.OUTCOME_QUARANTINED, tally_pb2.OUTCOME_ACCEPTED)
    reply = await tally.admin.GetSubmission(tally_pb2.GetSubmissionRequest(submission_id=first.receipt.submission_id))
    got = reply.submission
    assert (got.outcome, got.status) == (tally_pb2.OUTCOME_QUARANTINED, tally_pb2.SUBMISSION_STATUS_REPLACED)
    assert got.receipt == first.receipt
    rows = await tally.db.fetch("SELECT version, quarantined FROM tally.outbox ORDER BY id")
    assert [tuple(r) for r in rows] == [(1, True), (2, False)]


async def test_same_form_fifty_times_at_once_is_stored_once(tally: Tally) -> None:
    st = await tally.station()
    request = signed(st.key, consistent_form(st.tps, "ppwp", tally.contests["ppwp"]))
    responses = await asyncio.gather(*(tally.stub.Submit(request) for _ in range(50)))
    outcomes = sorted(tally_pb2.Outcome.Name(r.outcome).removeprefix("OUTCOME_") for r in responses)
    assert outcomes == ["ACCEPTED"] + ["DUPLICATE"] * 49
    assert len({r.receipt.SerializeToString() for r in responses}) == 1
    assert await tally.count("submission") == 1
    assert await tally.count("outbox") == 1


async def test_two_payloads_same_version_at_once_exactly_one_wins(tally: Tally) -> None:
    choices = tally.contests["ppwp"]
    for round_ in range(5):
        st = await tally.station()
        a = signed(st.key, consistent_form(st.tps, "ppwp", choices, seed=10 + round_))
        b = signed(st.key, consistent_form(st.tps, "ppwp", choices, seed=20 + round_))
        results = await asyncio.gather(tally.stub.Submit(a), tally.stub.Submit(b), return_exceptions=True)
        wins = [r for r in results if isinstance(r, tally_pb2.SubmitResponse)]
        losses = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(wins) == 1 and len(losses) == 1
        assert losses[0].code() == grpc.StatusCode.ALREADY_EXISTS
        winner = a if results[0] is wins[0] else b
        stored = await tally.db.fetchval("SELECT payload FROM tally.submission WHERE tps = $1", st.tps)
        assert bytes(stored) == winner.form.payload


async def test_submit_batch_gives_an_outcome_per_item(tally: Tally) -> None:
    choices = tally.contests["ppwp"]
    st = await tally.station()
    good = signed(st.key, consistent_form(st.tps, "ppwp", choices, version=3))
    older = signed(st.key, consistent_form(st.tps, "ppwp", choices, version=2))
    clash = signed(st.key, consistent_form(st.tps, "ppwp", choices, version=3, seed=9))
    garbage = signed(st.key, consistent_form(st.tps, "ppwp", choices))
    garbage.form.signature = bytes(64)
    batch = tally_pb2.SubmitBatchRequest(items=[good, good, older, clash, garbage])
    response = await tally.stub.SubmitBatch(batch)
    got = [(r.index, tally_pb2.Outcome.Name(r.outcome).removeprefix("OUTCOME_")) for r in response.results]
    assert got == [(0, "ACCEPTED"), (1, "DUPLICATE"), (2, "SUPERSEDED"), (3, "CONFLICT"), (4, "REJECTED")]
    assert response.results[3].error.code == grpc.StatusCode.ALREADY_EXISTS.value[0]
    assert response.results[4].error.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert response.results[1].receipt == response.results[0].receipt
    assert await tally.count("submission") == 2
