"""Submitting signed C.Hasil forms from a device: store first, then send, and keep trying.

`Client.submit` signs a form, commits it to the outbox, and makes one attempt
to send it. `Client.flush` sends everything still pending, oldest first,
retrying what may succeed later (the network, an overloaded or recovering
tally) with exponential backoff and full jitter, never sooner than the
server's retry-after hint; `Client.retry` does the same for one attempt's
entry. Resending is always safe: the outbox keeps the exact signed bytes, and
tally answers a resend DUPLICATE with the original receipt.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from suara.client.outbox import Entry, Kind, Outbox, Put, Receipt
from suara.client.stubs import tally_stub
from suara.election.checks import MAX_PHOTOS
from suara.election.outcomes import OUTCOMES, outcome_name
from suara.election.signing import DeviceKey
from suara.runtime.backoff import Backoff
from suara.runtime.tls import ClientTls, open_channel
from suara.runtime.wire import MESSAGE_LIMITS, RETRY_AFTER_KEY
from suara.v1 import form_pb2, tally_pb2

# Refusals about the form itself, its signer or its key: the same bytes would be refused again.
# Anything else (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, a lost connection, even
# INTERNAL) says nothing about the form, so it stays pending: giving up there would lose it.
TERMINAL_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


def _too_large(code: grpc.StatusCode, hint: float | None) -> bool:
    """RESOURCE_EXHAUSTED without a retry hint: the request is above a size limit (tally's every
    overload and rate refusal gives a hint), so the same bytes would be refused again."""
    return code == grpc.StatusCode.RESOURCE_EXHAUSTED and hint is None


# Statuses that may mean the connection itself is broken: a fresh channel connects at once,
# instead of waiting out grpc's own reconnect backoff once the network is back.
_RECONNECT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

Sleep = Callable[[float], Awaitable[None]]

_STORED = frozenset(OUTCOMES[name] for name in ("ACCEPTED", "QUARANTINED", "DUPLICATE", "SUPERSEDED"))
_CODES = {code.value[0]: code for code in grpc.StatusCode}  # SubmitBatch reports an item's status as its number


class FormError(ValueError):
    """The form cannot be signed as given (wrong TPS for the key, too many photos…)."""


def photo_sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def prepare_form(form: form_pb2.CHasilForm, photos: Sequence[bytes] = ()) -> form_pb2.CHasilForm:
    """A copy of `form` that binds the photos' hashes into its signed bytes."""
    if len(photos) > MAX_PHOTOS:
        raise FormError(f"at most {MAX_PHOTOS} photos per form, got {len(photos)}")
    prepared = form_pb2.CHasilForm()
    prepared.CopyFrom(form)
    for content in photos:
        digest = photo_sha256(content)
        if digest not in prepared.photo_sha256:
            prepared.photo_sha256.append(digest)
    return prepared


def with_election(form: form_pb2.CHasilForm, key: DeviceKey) -> form_pb2.CHasilForm:
    """`form` naming the election of the key (which its key file carries), unless it names one itself."""
    if not form.election_id:
        form.election_id = key.election_id
    elif key.election_id and form.election_id != key.election_id:
        raise FormError(
            f"the form is of election {form.election_id!r} but this device key is of election {key.election_id!r}; "
            "tally would refuse it (FAILED_PRECONDITION)"
        )
    return form


def sign_form(form: form_pb2.CHasilForm, key: DeviceKey) -> form_pb2.SignedForm:
    """Serialize once (deterministically: map order fixed) and sign those bytes."""
    if form.tps != key.tps:
        raise FormError(
            f"this device key is enrolled for TPS {key.tps}, but the form is for TPS {form.tps!r}; "
            "tally would refuse it (PERMISSION_DENIED)"
        )
    payload = form.SerializeToString(deterministic=True)
    return form_pb2.SignedForm(payload=payload, signature=key.sign(payload), device_id=key.device_id)


def _same_apart_from_signing_time(payload: bytes, form: form_pb2.CHasilForm) -> bool:
    stored = form_pb2.CHasilForm.FromString(payload)
    stored.ClearField("signed_at")
    candidate = form_pb2.CHasilForm()
    candidate.CopyFrom(form)
    candidate.ClearField("signed_at")
    return stored == candidate


def retry_after_s(error: grpc.aio.AioRpcError) -> float | None:
    """The server's hint, from `retry-after-ms` trailing metadata or a google.rpc.RetryInfo detail."""
    for key, value in error.trailing_metadata() or ():
        if key == RETRY_AFTER_KEY:
            try:
                return max(0.0, int(value) / 1000)
            except (TypeError, ValueError):
                break  # a garbled hint: look for RetryInfo instead
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # the details do not match the status: ignore them
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return max(0.0, info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    return None


def _request(entry: Entry) -> tally_pb2.SubmitRequest:
    return tally_pb2.SubmitRequest(
        form=form_pb2.SignedForm(payload=entry.payload, signature=entry.signature, device_id=entry.device_id),
        photos=[tally_pb2.Photo(content=p) for p in entry.photos],
    )


@dataclass(frozen=True)
class Attempt:
    """What one send attempt did to an entry."""

    entry: Entry
    retry: bool  # still pending: the failure may pass
    retry_after_s: float | None = None  # the server's hint, when it gave one
    outcome: str | None = None  # what tally answered this time (DUPLICATE for a resend), None if no answer


@dataclass
class FlushReport:
    sent: list[Entry] = field(default_factory=list)
    rejected: list[Entry] = field(default_factory=list)
    pending: list[Entry] = field(default_factory=list)  # still pending when the flush stopped
    attempts: int = 0

    @property
    def complete(self) -> bool:
        return not self.pending and not self.rejected


@dataclass(frozen=True)
class Progress:
    """Reported before each wait and after each settled entry, for a progress line."""

    sent: int
    rejected: int
    pending: int
    waiting_s: float  # 0 unless about to wait before retrying
    last_error: str | None


class Client:
    """Signs, stores and sends forms to one tally. Use `async with await Client.open(...)`.

    A subclass sends another kind of outbox entry to another server (suara.client.recap: an
    official's recaps to aggregate) by overriding `store`, `send` and `send_batch`; the outbox,
    the flush, the backoff and what counts as final are this class's.
    """

    kind: Kind = "form"  # what its outbox holds
    server = "tally"  # who it sends to, as its messages name it

    def __init__(
        self,
        outbox: Outbox,
        target: str,
        *,
        tls: ClientTls | None,
        call_timeout_s: float = 20.0,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 60.0,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        batch_max: int = 100,
        batch_bytes: int = 4 * 1024 * 1024,  # well under tally's SubmitBatch limit (wire.tally_submit_bytes)
        owns_outbox: bool = False,
    ) -> None:
        self.outbox = outbox
        self.target = target
        self.tls = tls  # tally's CA (a device has no certificate of its own); None: plaintext, only if asked for
        self.call_timeout_s = call_timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._clock_ms = clock
        self._owns_outbox = owns_outbox
        # A flush catching up on many forms sends them in SubmitBatch calls: one round trip on a slow link.
        self.batch_max = batch_max
        self.batch_bytes = batch_bytes
        self._channel: grpc.aio.Channel | None = None

    @classmethod
    async def open(cls, outbox_path: Path, target: str, **options: Any) -> Self:
        """A client with its own outbox at `outbox_path` (closed with the client); options as for __init__."""
        return cls(await Outbox.open(outbox_path, cls.kind), target, owns_outbox=True, **options)

    async def close(self) -> None:
        await self._drop_channel()
        if self._owns_outbox:
            await self.outbox.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def backoff(self) -> Backoff:
        return Backoff(self.backoff_base_s, self.backoff_cap_s, self._rng)

    async def store(self, form: form_pb2.CHasilForm, key: DeviceKey, photos: Sequence[bytes] = ()) -> tuple[Entry, Put]:
        """Sign and commit to the outbox; nothing goes on the network.

        A form without a signing time gets the device's clock. Storing the same form
        again (same content, whatever the clock says now) keeps the bytes signed the
        first time, so a second `suara submit` of one file is a resend, not a CONFLICT.
        """
        form = with_election(prepare_form(form, photos), key)

        def sign(existing: Entry | None) -> tuple[bytes, bytes, str]:  # in the outbox's thread
            if (
                existing is not None
                and not form.HasField("signed_at")
                and existing.device_id == key.device_id
                and _same_apart_from_signing_time(existing.payload, form)
            ):
                first = form_pb2.CHasilForm.FromString(existing.payload)
                if first.HasField("signed_at"):
                    form.signed_at.CopyFrom(first.signed_at)
            elif not form.HasField("signed_at"):
                form.signed_at.FromMilliseconds(self._clock_ms())
            signed = sign_form(form, key)
            return signed.payload, signed.signature, signed.device_id

        return await self.outbox.put_signed((form.tps, form.contest, form.version), sign, photos)

    async def submit(self, form: form_pb2.CHasilForm, key: DeviceKey, photos: Sequence[bytes] = ()) -> Attempt:
        """Store the signed form durably, then try once to send it.

        The entry's state says what happened: 'sent' (with its receipt), 'rejected'
        (with the server's reason) or 'pending' (safe in the outbox; `flush` sends it).
        An entry already sent is not sent again: its receipt is returned as it is.
        """
        entry, _ = await self.store(form, key, photos)
        if entry.state != "pending":
            return Attempt(entry, retry=False)
        return await self.send(entry)

    async def send(self, entry: Entry) -> Attempt:
        """One attempt to deliver an entry, whatever its state (resending is safe), recorded in the outbox."""
        try:
            response = await tally_stub(self._connect()).Submit(_request(entry), timeout=self.call_timeout_s)
        except grpc.aio.AioRpcError as error:
            return await self._failed(entry, error.code(), error.details() or error.code().name, error)
        return await self._sent(
            entry, response.outcome, response.receipt, response.failed_checks, response.current_version
        )

    async def send_batch(self, entries: Sequence[Entry]) -> list[Attempt]:
        """One SubmitBatch call for several entries, oldest first; each gets its own outcome."""
        request = tally_pb2.SubmitBatchRequest(items=[_request(e) for e in entries])
        try:
            response = await tally_stub(self._connect()).SubmitBatch(request, timeout=self.call_timeout_s)
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code in TERMINAL_CODES or _too_large(code, retry_after_s(error)):
                # A refusal of the call (an older tally without SubmitBatch, a batch too large) says
                # nothing about any one form: fall back to sending them one by one.
                self.batch_max = 1
                return [await self.send(entries[0])]
            message = error.details() or code.name
            return [await self._failed(e, code, message, error) for e in entries]
        attempts = []
        for item in sorted(response.results, key=lambda r: r.index):
            entry = entries[item.index]
            if item.outcome in _STORED:
                attempts.append(
                    await self._sent(entry, item.outcome, item.receipt, item.failed_checks, item.current_version)
                )
            else:
                code = _CODES.get(item.error.code, grpc.StatusCode.UNKNOWN)
                hint = item.error.retry_after_ms / 1000 if item.error.retry_after_ms > 0 else None
                attempts.append(await self._failed(entry, code, item.error.message or code.name, None, hint))
        return attempts

    async def _sent(
        self,
        entry: Entry,
        outcome: int,
        receipt: tally_pb2.Receipt,
        failed_checks: Sequence[str],
        current_version: int,
    ) -> Attempt:
        name = outcome_name(outcome)
        stored = Receipt(
            submission_id=receipt.submission_id,
            payload_sha256=receipt.payload_sha256,
            chain_position=receipt.chain_position,
            chain_hash=receipt.chain_hash,
            server_time=receipt.server_time.ToJsonString(),
        )
        sent = await self.outbox.mark_sent(entry.id, name, stored, list(failed_checks), current_version)
        return Attempt(sent, retry=False, outcome=name)

    async def _failed(
        self,
        entry: Entry,
        code: grpc.StatusCode,
        message: str,
        error: grpc.aio.AioRpcError | None,
        hint: float | None = None,
    ) -> Attempt:
        if error is not None:
            hint = retry_after_s(error)
        if code in TERMINAL_CODES or _too_large(code, hint):
            if entry.state == "sent":  # a resend refused now does not undo the stored receipt
                return Attempt(entry, retry=False)
            return Attempt(await self.outbox.mark_rejected(entry.id, code.name, message), retry=False)
        if code in _RECONNECT_CODES and error is not None:
            await self._drop_channel()
        failed = await self.outbox.record_failure(entry.id, code.name, _explain(code, message, self.server))
        return Attempt(failed, retry=True, retry_after_s=hint)

    async def resend(self, tps: str, contest: str, version: int) -> Attempt:
        """Send a stored entry again (e.g. to confirm it): tally answers DUPLICATE with the same receipt."""
        entry = await self.outbox.get(tps, contest, version)
        if entry is None:
            raise KeyError(f"TPS {tps} {contest} v{version} is not in the outbox")
        return await self.send(entry)

    async def retry(self, attempt: Attempt, on_attempt: Callable[[Attempt, float], None] | None = None) -> Attempt:
        """Send `attempt`'s entry again until an answer settles it, waiting before each try as `flush`
        does; the last attempt (`attempt` itself when it needs no retry).

        Unlike `flush`, which sends the pending entries, this keeps at one entry whatever its state: a
        resend of a sent entry that failed is sent again. `on_attempt` sees each attempt made here and
        the seconds its call took.
        """
        backoff = self.backoff()
        while attempt.retry:
            await self._sleep(_retry_delay(backoff, (attempt,)))
            started = time.perf_counter()
            attempt = await self.send(attempt.entry)
            if on_attempt is not None:
                on_attempt(attempt, time.perf_counter() - started)
        return attempt

    async def flush(
        self,
        deadline_s: float | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> FlushReport:
        """Send every pending entry, oldest first, until none is left or retrying would pass `deadline_s`.

        A retryable failure waits a full-jitter backoff delay, and never less than the
        server's retry-after hint, then tries the oldest pending entry again (entries
        stored meanwhile are picked up too). The deadline bounds the waiting, not a run
        of successes: `deadline_s=0` sends what goes through now and never waits, and
        no deadline keeps trying until the network is back.
        """
        loop = asyncio.get_running_loop()
        end = None if deadline_s is None else loop.time() + deadline_s
        report = FlushReport()
        backoff = self.backoff()

        def progress(pending: int, waiting_s: float, last_error: str | None) -> None:
            if on_progress is not None:
                on_progress(Progress(len(report.sent), len(report.rejected), pending, waiting_s, last_error))

        while pending := await self.outbox.pending():
            chunk = self._chunk(pending)
            attempts = await self.send_batch(chunk) if len(chunk) > 1 else [await self.send(chunk[0])]
            report.attempts += 1
            for attempt in attempts:
                if not attempt.retry:
                    (report.sent if attempt.entry.state == "sent" else report.rejected).append(attempt.entry)
            failed = [a for a in attempts if a.retry]
            if not failed:
                backoff.reset()
                progress(len(pending) - len(attempts), 0.0, None)
                continue
            delay = _retry_delay(backoff, failed)
            if end is not None and loop.time() + delay >= end:
                break  # the next attempt could not start before the deadline
            progress(len(pending) - len(attempts) + len(failed), delay, failed[0].entry.last_error)
            await self._sleep(delay)
        report.pending = await self.outbox.pending()
        return report

    def _chunk(self, pending: list[Entry]) -> list[Entry]:
        """The oldest pending entries that fit one call: at most batch_max, and under batch_bytes unless alone."""
        chunk: list[Entry] = []
        size = 0
        for entry in pending[: self.batch_max]:
            size += len(entry.payload) + sum(len(p) for p in entry.photos)
            if chunk and size > self.batch_bytes:
                break
            chunk.append(entry)
        return chunk

    def _connect(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = open_channel(
                self.target,
                self.tls,
                options=[
                    *MESSAGE_LIMITS,
                    # A connection of its own, as a phone has: clients in one process (the load test's
                    # devices) would otherwise share one, and one tally process behind a shared port.
                    ("grpc.use_local_subchannel_pool", 1),
                ],
            )
        return self._channel

    async def _drop_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()


def _retry_delay(backoff: Backoff, failed: Sequence[Attempt]) -> float:
    """The wait before trying again: the backoff's draw, never less than a retry-after the server gave."""
    return max(backoff.next_delay(), *(a.retry_after_s or 0.0 for a in failed))


def _explain(code: grpc.StatusCode, message: str, server: str = "tally") -> str:
    """A failure in few words: it is shown on a phone screen and in `suara outbox status`."""
    if code == grpc.StatusCode.UNAVAILABLE:
        if message.startswith("failed to connect to all addresses"):
            # grpc's transport chain ends with the reason that matters: "Connection refused", "Timeout"…
            message = message.rsplit(": ", 1)[-1].lower()
        return f"{server} unreachable ({message})"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer from {server} in time (a resend is safe)"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return f"{server} is busy ({message})"
    return f"{code.name}: {message}"
