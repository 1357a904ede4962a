"""The SDK against a real in-process tally: store first, send, retry, and never lose or double a form."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.tally.credentials import enroll_device
from suara.client import service_names
from suara.client.outbox import OutboxConflict
from suara.client.sdk import Client, FormError, retry_after_s
from suara.client.stubs import tally_stub
from suara.election.signing import DeviceKey
from suara.runtime.backoff import Backoff
from suara.runtime.errors import ServiceError
from suara.runtime.grpc_server import create_server
from suara.v1 import form_pb2, tally_pb2
from tests.client.doubles import Network, Waits
from tests.support.factories import TEST_ELECTION, Station, consistent_form, jpeg
from tests.support.pki import suite_pki
from tests.support.ports import closed_port
from tests.support.tally import Tally


def form_for(tally: Tally, station: Station, version: int = 1, seed: int = 0) -> form_pb2.CHasilForm:
    return consistent_form(station.tps, "ppwp", tally.contests["ppwp"], version, seed=seed)


async def stored(tally: Tally, tps: str) -> list[tally_pb2.Submission]:
    return list((await tally.admin.ListSubmissions(tally_pb2.ListSubmissionsRequest(tps=tps))).submissions)


@pytest.fixture
def outbox_path(tmp_path: Path) -> Path:
    return tmp_path / "device" / "outbox.sqlite3"


@pytest.fixture
async def online(tally: Tally, outbox_path: Path, waits: Waits) -> AsyncIterator[Client]:
    client = await open_client(outbox_path, f"127.0.0.1:{tally.app.port}", sleep=waits)
    yield client
    await client.close()


@pytest.fixture
async def offline(outbox_path: Path, waits: Waits) -> AsyncIterator[Client]:
    client = await open_client(outbox_path, f"127.0.0.1:{closed_port()}", sleep=waits, call_timeout_s=5.0)
    yield client
    await client.close()


async def test_a_form_signed_offline_is_kept_and_sent_when_the_network_returns(
    tally: Tally, offline: Client, outbox_path: Path, waits: Waits
) -> None:
    station = await tally.station()
    attempt = await offline.submit(form_for(tally, station), station.key)
    assert attempt.entry.state == "pending" and attempt.retry
    assert attempt.entry.last_code == "UNAVAILABLE" and attempt.entry.attempts == 1
    assert await tally.count("submission") == 0
    await offline.close()  # the phone is switched off: a new process opens the same outbox

    async with await open_client(outbox_path, f"127.0.0.1:{tally.app.port}", sleep=waits) as back:
        report = await back.flush()
        assert report.complete and [e.key for e in report.sent] == [attempt.entry.key]
        entry = await back.outbox.get(*attempt.entry.key)
    assert entry is not None and entry.state == "sent" and entry.outcome == "ACCEPTED"
    (submission,) = await stored(tally, station.tps)
    assert entry.receipt is not None
    assert entry.receipt.submission_id == submission.receipt.submission_id
    assert entry.receipt.chain_position == submission.receipt.chain_position
    assert entry.receipt.chain_hash == submission.receipt.chain_hash
    assert submission.payload == entry.payload  # the exact bytes signed offline
    assert waits.delays == []  # nothing failed after the network came back


async def test_resending_a_sent_form_is_a_duplicate_with_the_same_receipt(tally: Tally, online: Client) -> None:
    station = await tally.station()
    first = await online.submit(form_for(tally, station), station.key)
    assert first.outcome == "ACCEPTED" and first.entry.receipt is not None

    again = await online.resend(*first.entry.key)
    assert again.outcome == "DUPLICATE"
    assert again.entry.receipt == first.entry.receipt and again.entry.outcome == "ACCEPTED"

    # Submitting the same form again (a second `suara submit` of one file) signs nothing new.
    repeat = await online.submit(form_for(tally, station), station.key)
    assert repeat.outcome is None and repeat.entry.receipt == first.entry.receipt
    assert len(await stored(tally, station.tps)) == 1


async def test_a_lost_reply_is_answered_duplicate_and_stored_once(
    tally: Tally, offline: Client, outbox_path: Path, waits: Waits
) -> None:
    station = await tally.station()
    pending = (await offline.submit(form_for(tally, station), station.key)).entry
    # The form reached tally but the answer never came back: deliver the outbox's bytes directly.
    direct = await tally.stub.Submit(
        tally_pb2.SubmitRequest(
            form=form_pb2.SignedForm(payload=pending.payload, signature=pending.signature, device_id=pending.device_id)
        )
    )
    assert direct.outcome == tally_pb2.OUTCOME_ACCEPTED

    async with await open_client(outbox_path, f"127.0.0.1:{tally.app.port}", sleep=waits) as back:
        report = await back.flush()
    (entry,) = report.sent
    assert entry.outcome == "DUPLICATE"
    assert entry.receipt is not None and entry.receipt.submission_id == direct.receipt.submission_id
    assert entry.receipt.chain_hash == direct.receipt.chain_hash
    assert len(await stored(tally, station.tps)) == 1


async def test_the_form_is_on_disk_before_the_first_attempt(tally: Tally, outbox_path: Path) -> None:
    seen: list[tuple[str, int]] = []

    async def before(request: tally_pb2.SubmitRequest, context: Any) -> None:
        # Another process reading the file while the request is in flight (a crash right now).
        with contextlib.closing(sqlite3.connect(outbox_path)) as conn:
            seen.extend(conn.execute("SELECT state, length(payload) FROM entry").fetchall())

    station = await tally.station()
    async with FakeTally(tally, before=before) as fake, await open_client(outbox_path, fake.target) as client:
        attempt = await client.submit(form_for(tally, station), station.key)
    assert attempt.entry.state == "sent"
    assert seen == [("pending", len(attempt.entry.payload))]


async def test_photos_are_bound_into_the_signed_form_and_kept_until_sent(
    tally: Tally, offline: Client, outbox_path: Path
) -> None:
    station = await tally.station()
    photo = jpeg(b"c-hasil page 1")
    pending = (await offline.submit(form_for(tally, station), station.key, photos=[photo])).entry
    assert pending.photos == (photo,)
    await offline.close()
    async with await open_client(outbox_path, f"127.0.0.1:{tally.app.port}") as back:
        (entry,) = (await back.flush()).sent
    (submission,) = await stored(tally, station.tps)
    assert entry.outcome == "ACCEPTED" and len(submission.photo_sha256) == 1
    got = (await tally.stub.GetPhoto(tally_pb2.GetPhotoRequest(sha256=submission.photo_sha256[0]))).photo
    assert got.content == photo


async def test_a_conflict_is_rejected_with_the_servers_message_and_not_retried(
    tally: Tally, online: Client, waits: Waits
) -> None:
    station = await tally.station()
    # Another copy of version 1 (say, from the officer's second phone) reached tally first.
    other = form_for(tally, station, seed=1)
    payload = other.SerializeToString()
    signature = station.key.sign(payload)
    await tally.stub.Submit(
        tally_pb2.SubmitRequest(
            form=form_pb2.SignedForm(payload=payload, signature=signature, device_id=station.key.device_id)
        )
    )
    attempt = await online.submit(form_for(tally, station, seed=0), station.key)
    assert attempt.entry.state == "rejected" and not attempt.retry
    assert attempt.entry.last_code == "ALREADY_EXISTS"
    assert "different payload" in (attempt.entry.last_error or "")
    report = await online.flush()
    assert report.attempts == 0 and waits.delays == []
    assert (await online.outbox.get(*attempt.entry.key)) == attempt.entry
    # Locally too, only a higher version can follow: the same version with other content is refused.
    with pytest.raises(OutboxConflict, match="higher version"):
        await online.submit(form_for(tally, station, seed=2), station.key)
    corrected = await online.submit(form_for(tally, station, version=2, seed=0), station.key)
    assert corrected.outcome == "ACCEPTED"


async def test_a_rejection_is_final_until_the_officer_fixes_it(tally: Tally, online: Client) -> None:
    tps = tally.tps_codes.pop()
    key = DeviceKey.generate(tps)  # not enrolled yet
    attempt = await online.submit(consistent_form(tps, "ppwp", tally.contests["ppwp"]), key)
    assert attempt.entry.state == "rejected" and attempt.entry.last_code == "UNAUTHENTICATED"
    assert "suara device enroll" in (attempt.entry.last_error or "")
    assert (await online.flush()).attempts == 0

    await enroll_device(tally.db, key.device_id, tps, key.public_key, "test")
    again = await online.submit(consistent_form(tps, "ppwp", tally.contests["ppwp"]), key)
    assert again.outcome == "ACCEPTED" and again.entry.id == attempt.entry.id  # the same signed bytes, requeued


async def test_a_malformed_form_may_be_corrected_under_the_same_version(tally: Tally, online: Client) -> None:
    station = await tally.station()
    bad = form_for(tally, station)
    bad.votes["999999"] = 1  # no such choice: nothing is stored at tally
    rejected = (await online.submit(bad, station.key)).entry
    assert rejected.state == "rejected" and rejected.last_code == "INVALID_ARGUMENT"
    fixed = await online.submit(form_for(tally, station), station.key)
    assert fixed.outcome == "ACCEPTED"
    states = sorted(e.state for e in await online.outbox.entries())
    assert states == ["replaced", "sent"]  # the refused copy is kept, out of the way


async def test_retry_after_in_metadata_is_honoured(tally: Tally, outbox_path: Path, waits: Waits) -> None:
    station = await tally.station()
    async with FakeTally(tally, busy=3, retry_after_ms=700) as fake:
        # A tiny backoff base: the jittered delay alone would retry far sooner than tally asks.
        client = await open_client(outbox_path, fake.target, sleep=waits, backoff_base_s=0.01)
        async with client:
            attempt = await client.submit(form_for(tally, station), station.key)
            assert attempt.retry and attempt.retry_after_s == pytest.approx(0.7)
            report = await client.flush()
    assert report.complete and report.sent[0].outcome == "ACCEPTED"
    assert fake.calls == 4 and report.sent[0].attempts == 4
    assert len(waits.delays) == 2 and all(d >= 0.7 for d in waits.delays)  # submit's attempt waits for flush
    assert len(await stored(tally, station.tps)) == 1


async def test_retry_info_alone_is_honoured(tally: Tally, outbox_path: Path, waits: Waits) -> None:
    station = await tally.station()
    async with FakeTally(tally, busy=2, retry_after_ms=1500, metadata=False) as fake:
        client = await open_client(outbox_path, fake.target, sleep=waits, backoff_base_s=0.01)
        async with client:
            await client.store(form_for(tally, station), station.key)
            report = await client.flush()
    assert report.complete and waits.delays == [pytest.approx(1.5), pytest.approx(1.5)]


async def test_retry_waits_before_each_attempt_and_shows_each_one(
    tally: Tally, outbox_path: Path, waits: Waits
) -> None:
    station = await tally.station()
    seen: list[tuple[bool, str | None, float]] = []
    async with FakeTally(tally, busy=3, retry_after_ms=700) as fake:
        client = await open_client(outbox_path, fake.target, sleep=waits, backoff_base_s=0.01)
        async with client:
            first = await client.submit(form_for(tally, station), station.key)
            last = await client.retry(first, on_attempt=lambda a, s: seen.append((a.retry, a.outcome, s)))
    assert last.outcome == "ACCEPTED" and last.entry.state == "sent"
    assert fake.calls == 4
    # Unlike a flush, the first retry waits too: submit's own attempt was refused with a hint.
    assert len(waits.delays) == 3 and all(d >= 0.7 for d in waits.delays)
    assert [(r, o) for r, o, _ in seen] == [(True, None), (True, None), (False, "ACCEPTED")]
    assert all(s > 0 for _, _, s in seen)
    assert len(await stored(tally, station.tps)) == 1


async def test_retry_sends_a_failed_resend_again_until_tally_answers(
    tally: Tally, outbox_path: Path, waits: Waits
) -> None:
    station = await tally.station()

    async def unavailable_once(request: tally_pb2.SubmitRequest, context: Any) -> None:
        if fake.calls == 2:  # the resend: its answer is lost on the way
            await context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")

    async with FakeTally(tally, before=unavailable_once) as fake:
        client = await open_client(outbox_path, fake.target, sleep=waits)
        async with client:
            sent = await client.submit(form_for(tally, station), station.key)
            failed = await client.resend(*sent.entry.key)
            assert failed.retry and failed.entry.state == "sent"  # nothing pending: a flush would not send it
            last = await client.retry(failed)
            assert await client.retry(last, on_attempt=lambda a, s: pytest.fail("nothing to retry")) is last
    assert last.outcome == "DUPLICATE" and fake.calls == 3 and len(waits.delays) == 1


async def test_flush_backs_off_with_full_jitter_and_stops_at_its_deadline(tally: Tally, outbox_path: Path) -> None:
    station = await tally.station()
    delays: list[float] = []

    class Enough(Exception):
        pass

    async def sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) == 6:
            raise Enough  # the officer gives up; the form stays pending

    async with await open_client(
        outbox_path, f"127.0.0.1:{closed_port()}", sleep=sleep, rng=random.Random(42), backoff_base_s=0.5
    ) as client:
        await client.store(form_for(tally, station), station.key)
        with pytest.raises(Enough):
            await client.flush()
        # Full jitter: draw i is uniform(0, min(cap, base·2^i)), the very draws of the same seed.
        replay = random.Random(42)
        assert delays == [replay.uniform(0.0, min(60.0, 0.5 * 2**i)) for i in range(6)]
        assert all(0.0 <= d <= 0.5 * 2**i for i, d in enumerate(delays))
        assert (await client.outbox.pending())[0].attempts == 6

        # A deadline bounds the waiting: with none left, flush reports what is still pending.
        report = await client.flush(deadline_s=0)
    assert report.attempts == 1 and len(report.pending) == 1 and not report.complete


async def test_catching_up_sends_one_batch_with_an_outcome_per_form(
    tally: Tally, offline: Client, outbox_path: Path
) -> None:
    a, b = await tally.station(), await tally.station()
    stranger = DeviceKey.generate(tally.tps_codes.pop())  # never enrolled
    for station, version in ((a, 1), (b, 1), (a, 2)):
        await offline.store(form_for(tally, station, version), station.key)
    await offline.store(consistent_form(stranger.tps, "ppwp", tally.contests["ppwp"]), stranger)
    await offline.close()

    async with await open_client(outbox_path, f"127.0.0.1:{tally.app.port}") as back:
        report = await back.flush()
    assert report.attempts == 1  # one SubmitBatch round trip
    assert [(e.tps, e.version, e.outcome) for e in report.sent] == [
        (a.tps, 1, "ACCEPTED"),
        (b.tps, 1, "ACCEPTED"),
        (a.tps, 2, "ACCEPTED"),
    ]
    (refused,) = report.rejected
    assert refused.tps == stranger.tps and refused.last_code == "UNAUTHENTICATED"
    assert [s.version for s in await stored(tally, a.tps) if s.status == tally_pb2.SUBMISSION_STATUS_CURRENT] == [2]


async def test_a_tally_without_submit_batch_gets_the_forms_one_by_one(
    tally: Tally, offline: Client, outbox_path: Path
) -> None:
    station = await tally.station()
    for version in (1, 2, 3):
        await offline.store(form_for(tally, station, version), station.key)
    async with FakeTally(tally) as fake:  # serves Submit only: SubmitBatch is UNIMPLEMENTED
        client = await open_client(outbox_path, fake.target)
        async with client:
            report = await client.flush()
    assert report.complete and [e.version for e in report.sent] == [1, 2, 3]
    assert fake.calls == 3 and client.batch_max == 1


def test_backoff_ceiling_grows_to_its_cap() -> None:
    backoff = Backoff(0.5, 4.0, random.Random(1))
    ceilings = []
    for _ in range(6):
        ceilings.append(backoff.ceiling())
        assert 0.0 <= backoff.next_delay() <= ceilings[-1]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.ceiling() == 0.5


class FakeTally:
    """A stand-in for tally in front of the real one, for what the real one cannot be made to do on cue.

    It answers the first `busy` Submit calls RESOURCE_EXHAUSTED with a retry-after hint (as tally does
    when overloaded: in `retry-after-ms` metadata and a google.rpc.RetryInfo detail, or only the
    latter with metadata=False), and can look at the device's disk before a call goes through. Every
    other call is delegated, unchanged, to the real in-process tally.
    """

    def __init__(
        self,
        real: Tally,
        *,
        busy: int = 0,
        retry_after_ms: int = 0,
        metadata: bool = True,
        before: Any = None,
    ) -> None:
        self.real = real
        self.busy = busy
        self.retry_after_ms = retry_after_ms
        self.metadata = metadata
        self.before = before
        self.calls = 0
        self.target = ""

    async def __aenter__(self) -> FakeTally:
        submit = grpc.unary_unary_rpc_method_handler(
            self.Submit,
            request_deserializer=tally_pb2.SubmitRequest.FromString,
            response_serializer=tally_pb2.SubmitResponse.SerializeToString,
        )
        handler = grpc.method_handlers_generic_handler(
            service_names.TALLY.full_name, {"Submit": submit}
        )  # Submit is all it serves
        self.server, port = create_server(
            lambda s: s.add_generic_rpc_handlers((handler,)), [], tls=suite_pki().server_tls("tally")
        )
        await self.server.start()
        self.target = f"127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.stop(0)

    async def Submit(self, request: tally_pb2.SubmitRequest, context: Any) -> tally_pb2.SubmitResponse:
        self.calls += 1
        if self.before is not None:
            await self.before(request, context)
        if self.calls <= self.busy:
            error = Busy("tally is at capacity; retry later", retry_after_ms=self.retry_after_ms)
            if self.metadata:
                raise error  # the server kit adds both the metadata and the RetryInfo, as for tally
            status = rpc_status.to_status(error.to_status())
            await context.abort_with_status(status)
        return await tally_stub(self.real.channel).Submit(request)


class Busy(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


def test_retry_after_reads_metadata_first() -> None:
    class Error(grpc.aio.AioRpcError):
        def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
            super().__init__(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(*metadata), "down")

    assert retry_after_s(Error((("retry-after-ms", "250"),))) == 0.25
    assert retry_after_s(Error((("retry-after-ms", "soon"),))) is None
    assert retry_after_s(Error(())) is None


@dataclass(frozen=True)
class Step:
    kind: str  # submit a new version, resubmit the last form, cut or restore the network, flush, restart
    slot: int  # which TPS
    seed: int  # which counts the new version carries


steps_strategy = st.lists(
    st.one_of(
        st.builds(Step, kind=st.just("submit"), slot=st.integers(0, 1), seed=st.integers(0, 3)),
        st.builds(
            Step,
            kind=st.sampled_from(["resubmit", "cut", "restore", "flush", "restart"]),
            slot=st.integers(0, 1),
            seed=st.just(0),
        ),
    ),
    min_size=1,
    max_size=14,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=steps_strategy, batch_max=st.sampled_from([1, 2, 100]))
async def test_every_signed_form_reaches_tally_exactly_once_whatever_the_network_does(
    tally: Tally, tmp_path: Path, steps: list[Step], batch_max: int
) -> None:
    stations = [await tally.station(), await tally.station()]
    network = await Network(tally.app.port).start()
    path = tmp_path / f"{uuid.uuid4().hex}.sqlite3"
    waits = Waits()

    async def reopen() -> Client:
        return await open_client(path, network.target, sleep=waits, call_timeout_s=5.0, batch_max=batch_max)

    client = await reopen()
    version = [0, 0]
    last: dict[int, form_pb2.CHasilForm] = {}
    signed: dict[tuple[int, int], bytes] = {}  # (slot, version) -> the bytes the device signed
    try:
        for step in steps:
            station = stations[step.slot]
            if step.kind == "submit":
                version[step.slot] += 1
                form = consistent_form(station.tps, "ppwp", tally.contests["ppwp"], version[step.slot], seed=step.seed)
                attempt = await client.submit(form, station.key)
                signed[(step.slot, version[step.slot])] = attempt.entry.payload
                last[step.slot] = form
            elif step.kind == "resubmit" and step.slot in last:
                attempt = await client.submit(last[step.slot], station.key)
                assert attempt.entry.payload == signed[(step.slot, version[step.slot])]  # never re-signed
            elif step.kind == "cut":
                network.cut()
            elif step.kind == "restore":
                network.restore()
            elif step.kind == "flush":
                await client.flush(deadline_s=0)  # what goes through now, without waiting
            elif step.kind == "restart":
                await client.close()
                client = await reopen()
        network.restore()
        async with asyncio.timeout(30):
            report = await client.flush()
        assert report.complete
        entries = await client.outbox.entries()
    finally:
        await client.close()
        await network.close()

    assert sorted((stations.index(next(s for s in stations if s.tps == e.tps)), e.version) for e in entries) == sorted(
        signed
    )
    assert all(e.state == "sent" and e.receipt is not None for e in entries)
    for slot, station in enumerate(stations):
        at_tally = await stored(tally, station.tps)
        assert {s.version: s.payload for s in at_tally} == {v: p for (s, v), p in signed.items() if s == slot}
        assert len(at_tally) == len({s.version for s in at_tally})  # each version once
        current = [s.version for s in at_tally if s.status == tally_pb2.SUBMISSION_STATUS_CURRENT]
        assert current == ([version[slot]] if version[slot] else [])


async def test_a_form_for_another_tps_is_refused_before_anything_is_stored(tally: Tally, offline: Client) -> None:
    station = await tally.station()
    other_tps = tally.tps_codes.pop()
    with pytest.raises(FormError, match=f"enrolled for TPS {station.tps}"):
        await offline.submit(consistent_form(other_tps, "ppwp", tally.contests["ppwp"]), station.key)
    with pytest.raises(FormError, match="at most 3 photos"):
        await offline.submit(form_for(tally, station), station.key, photos=[jpeg(bytes([i])) for i in range(4)])
    assert await offline.outbox.entries() == []


async def test_a_form_is_signed_for_the_election_of_its_key(tally: Tally, online: Client) -> None:
    station = await tally.station()  # a key of the test registry's election
    form = form_for(tally, station)
    form.ClearField("election_id")  # as a client that leaves it to the key file fills it
    attempt = await online.submit(form, station.key)
    assert attempt.outcome == "ACCEPTED"
    assert form_pb2.CHasilForm.FromString(attempt.entry.payload).election_id == TEST_ELECTION
    with pytest.raises(FormError, match="election 'gladi-2024'"):
        other = consistent_form(station.tps, "ppwp", tally.contests["ppwp"], 2, election_id="gladi-2024")
        await online.submit(other, station.key)


async def open_client(path: Path, target: str, **options: Any) -> Client:
    """A client as a device has it: verifying tally's certificate against the CA, no certificate of its own."""
    return await Client.open(path, target, tls=suite_pki().client_tls(), **options)
