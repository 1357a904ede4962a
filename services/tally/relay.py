"""The outbox relay: delivers accepted forms from tally.outbox to aggregate, in batches, until confirmed.

One loop: claim the oldest pending rows (arrival order, up to a batch), send
them as one ApplyUpdates call signed with the writer credential, and mark
exactly those rows delivered once aggregate has answered. A row is marked only
after a reply, so nothing is lost; a lost reply means the batch is sent again,
which aggregate's versioned, idempotent updates absorb (at-least-once).

Why one active relay (a session advisory lock) rather than SKIP LOCKED claims:
with SKIP LOCKED two relays send different batches at once, so aggregate sees
them out of arrival order, and each holds a transaction (and its row locks and
connection) open across a network call that may hang for the length of an
outage. One relay sends in arrival order, holds no transaction across the
call, and is not the bottleneck (aggregate applies a batch in one
transaction). A second relay is a hot standby: it retries the lock every poll
interval and takes over when the holder's connection goes (the lock goes with
it). If the holder lost its connection mid-batch, the successor resends that
batch: at-least-once again, never a gap.

Faults: aggregate down (UNAVAILABLE, DEADLINE_EXCEEDED, …) or the database
down — back off exponentially with full jitter (capped at a few seconds) and
retry the same batch; after an outage the backlog drains at full batch speed,
with no pause between full batches. New rows wake the relay at once through
LISTEN on `suara_tally_outbox` (a hint from the 0002 trigger); the poll
interval is the fallback if a notification is missed.

A bad row never holds up the rest (the dead letters, tally.dead_letter). A row
aggregate refuses (UPDATE_OUTCOME_REFUSED: no form can hold its numbers) is set
aside with aggregate's reason while the rest of its batch is delivered; so is a
row that cannot even be encoded. A batch that fails as a whole for a reason that
may be in its rows (INVALID_ARGUMENT, INTERNAL, a reply that does not fit …) is
halved, and the halves sent, down to the one row at fault, which is set aside
after failing alone LONE_ATTEMPTS times. Each row set aside raises an alarm and
an error log event `relay_dead_letter`. What says nothing about the rows (aggregate
down, a refused credential) is retried as before; and should row after row fail
alone with nothing delivered in between (aggregate broken, not the rows), the
relay stops setting rows aside after DEAD_LETTER_STORM and retries with backoff
instead: `relay_stuck` in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import asyncpg
import grpc
import structlog

from services.tally import metrics
from services.tally.queries import QUERIES
from suara.client import service_names
from suara.client.aggregate_stub import aggregate_stub
from suara.runtime import tracing
from suara.runtime.auth.certificate import CertCredential, credential_tls, load_credential
from suara.runtime.auth.credential import ServiceCredential
from suara.runtime.backoff import Backoff
from suara.runtime.database import DatabaseUnavailable, Session
from suara.runtime.settings import Settings
from suara.runtime.tls import ClientTls, open_channel
from suara.runtime.wire import MESSAGE_LIMITS
from suara.v1 import aggregate_pb2

log = structlog.stdlib.get_logger("suara.tally.relay")

CHANNEL: Final = "suara_tally_outbox"
LOCK_KEY: Final = 0x5355415252454C59  # "SUARRELY": distinct from the migration lock
APPLY_METHOD: Final = service_names.method_path(service_names.AGGREGATE, "ApplyUpdates")
APPLICATION_NAME: Final = "suara-relay"  # how operators (and tests) find its session in pg_stat_activity
LONE_ATTEMPTS: Final = 3  # a row failing alone this many times in a row is set aside
DEAD_LETTER_STORM: Final = 10  # rows set aside for failing alone, with nothing delivered since: aggregate is at fault

TRANSIENT: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)
# About the caller or the server, never the rows: splitting the batch would not help.
NOT_THE_ROWS: Final = TRANSIENT | {
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNIMPLEMENTED,
}

# Without these, gRPC's own reconnect backoff grows to 120 s while aggregate is down, and every call
# fails fast meanwhile: the backlog would wait up to two minutes after aggregate is back.
CHANNEL_OPTIONS: Final = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    *MESSAGE_LIMITS,
)


async def undelivered(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """Outbox rows not yet confirmed by aggregate: 0 once the relay has delivered everything."""
    return int(await conn.fetchval(QUERIES.relay_undelivered))


def credential_path(settings: Settings) -> Path:
    return Path(settings.relay.credential) if settings.relay.credential else settings.data_dir / "relay.key.json"


def tps_update(row: asyncpg.Record | dict[str, Any]) -> aggregate_pb2.TpsUpdate:
    """One outbox row as aggregate's TpsUpdate. `counts` is what tally stored (suara.election.form.counts_of)."""
    raw = row["counts"]
    counts: dict[str, Any] = json.loads(raw) if isinstance(raw, str) else dict(raw)
    totals = aggregate_pb2.Totals(
        votes={str(k): int(v) for k, v in counts.get("votes", {}).items()},
        suara_sah=int(counts.get("suara_sah", 0)),
        suara_tidak_sah=int(counts.get("suara_tidak_sah", 0)),
        suara_total=int(counts.get("suara_total", 0)),
        dpt=int(counts.get("pemilih_dpt_j", 0)),
        pengguna=int(counts.get("pengguna_total_j", 0)),
    )
    return aggregate_pb2.TpsUpdate(
        tps=row["tps"],
        contest=row["contest"],
        version=row["version"],
        totals=totals,
        quarantined=row["quarantined"],
        failed_checks=list(row["failed_checks"]),
        administrasi={k: int(v) for k, v in counts.items() if k != "votes"},
        photo_sha256=list(row.get("photo_sha256") or ()),
    )


def relay_for(settings: Settings, database_url: str) -> Relay | None:
    """The relay tally runs in-process, or None (and why, in the log) when no writer credential is set up."""
    path = credential_path(settings)
    if not path.exists():
        log.warning("relay_disabled", reason=f"no credential at {path}; see `suara service issue --role writer`")
        return None
    return Relay.from_settings(settings, database_url)


class _Rejected(Exception):
    """aggregate answered, but not with one outcome per update: not a confirmation."""


def _encode(rows: Sequence[asyncpg.Record]) -> tuple[list[tuple[asyncpg.Record, aggregate_pb2.TpsUpdate]], list[_Dead]]:
    """Each row as a TpsUpdate, or set aside when it cannot be one (a count beyond int64, bad JSON)."""
    sendable: list[tuple[asyncpg.Record, aggregate_pb2.TpsUpdate]] = []
    dead: list[_Dead] = []
    for row in rows:
        try:
            sendable.append((row, tps_update(row)))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            dead.append(_Dead(row, f"cannot be sent as a TpsUpdate: {str(exc)[:200]}", ()))
    return sendable, dead


@dataclass(frozen=True)
class _Dead:
    row: asyncpg.Record
    reason: str
    fields: tuple[str, ...]


class Relay:
    """Drains tally.outbox into aggregate. `start()` / `stop()`, in the tally process or on its own."""

    def __init__(
        self,
        database_url: str,
        aggregate_address: str,
        credential: CertCredential | ServiceCredential,
        *,
        tls: ClientTls | None = None,
        batch: int = 1000,
        poll_interval_s: float = 1.0,
        call_timeout_s: float = 30.0,
        backoff_base_s: float = 0.1,
        backoff_cap_s: float = 5.0,
    ) -> None:
        self.database_url = database_url
        self.aggregate_address = aggregate_address
        self.credential = credential
        self.tls = tls  # None: plaintext (SUARA_INSECURE), the credential a token in each call
        self.batch = batch
        self.poll_interval_s = poll_interval_s
        self.call_timeout_s = call_timeout_s
        self.backoff = Backoff(backoff_base_s, backoff_cap_s)
        self.delivered = 0  # rows marked delivered by this relay
        self.dead_lettered = 0  # rows this relay set aside (tally.dead_letter)
        self._lone_failures = 0  # times the batch of one row in `pending` failed in a row
        self._dead_since_delivery = 0  # rows set aside for failing alone since a call last succeeded
        # While a failed batch is being halved: the last outbox id it held, and the size to claim next,
        # so that the search goes on through its other half rather than from a full batch again.
        self._suspect: tuple[int, int] | None = None
        self.calls = 0  # ApplyUpdates calls answered
        self.active = False  # holds the lock: the one relay delivering
        self.lock_attempts = 0  # tries for the lock (a standby: one per poll interval)
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._caught_up = 0  # how many times a claim found nothing pending
        self._session: Session | None = None
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, database_url: str) -> Relay:
        credential = load_credential(credential_path(settings))
        if credential.role != "writer":
            raise ValueError(f"the relay needs a writer credential; {credential.id} is a {credential.role}")
        tls = credential_tls(settings, credential)
        return cls(database_url, settings.peers.aggregate, credential, tls=tls, batch=settings.relay.batch)

    def start(self) -> None:
        self._channel = open_channel(self.aggregate_address, self.tls, options=CHANNEL_OPTIONS)
        self._task = asyncio.create_task(self._run(), name="tally-outbox-relay")

    async def stop(self) -> None:
        """Stop at once; a batch in flight stays pending and is sent again by whoever relays next."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._disconnect()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def wait_caught_up(self) -> None:
        """Until this relay next finds nothing pending: everything committed before the call is delivered."""
        async with self._progress:
            seen = self._caught_up
            await self._progress.wait_for(lambda: self._caught_up > seen)

    async def wait_lock_attempts(self, count: int) -> None:
        """Until this relay has tried for the lock `count` times."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.lock_attempts >= count)

    # --- the loop ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        pending: list[asyncpg.Record] = []  # the batch being delivered, kept across retries
        while True:
            try:
                conn = await self._connection()
                if not self.active:
                    self.lock_attempts += 1
                    self.active = bool(await conn.fetchval(QUERIES.relay_try_lock, LOCK_KEY))
                    if not self.active:
                        await self._note_progress()
                        # Notifications are the active relay's: a standby woken by each would retry the
                        # lock in a busy loop all night. It retries once per poll interval, no more.
                        await asyncio.sleep(self.poll_interval_s)
                        continue
                    log.info("relay_active", aggregate=self.aggregate_address)
                if not pending:
                    self._wake.clear()  # before the read, so a NOTIFY during it is not lost
                    pending = self._narrowed(list(await conn.fetch(QUERIES.relay_pending, self.batch)))
                    if not pending:
                        self._caught_up += 1
                        await self._note_progress()
                        await self._sleep_or_wake(self.poll_interval_s)
                        continue
                sendable, dead = _encode(pending)
                # Its ApplyUpdates call is this span's child; it links to the commits that wrote the rows.
                traceparents = (row["traceparent"] for row in pending)
                with tracing.batch_span("tally.relay.deliver", (), traceparents, {"suara.rows": len(pending)}):
                    refused = await self._send([u for _, u in sendable]) if sendable else {}
                    dead += [
                        _Dead(row, refused[i].reason or "refused by aggregate", tuple(refused[i].fields))
                        for i, (row, _) in enumerate(sendable)
                        if i in refused
                    ]
                    taken = [row["id"] for i, (row, _) in enumerate(sendable) if i not in refused]
                    await self._settle(conn, taken, dead)
                pending = []
                self._lone_failures = 0
                if sendable:
                    self._dead_since_delivery = 0
                self.backoff.reset()
            except grpc.aio.AioRpcError as exc:
                self._log_rpc_failure(exc, len(pending))
                if exc.code() not in NOT_THE_ROWS:
                    pending = await self._narrow(pending, f"{exc.code().name}: {(exc.details() or '')[:300]}")
                await asyncio.sleep(self.backoff.next_delay())
            except _Rejected as exc:
                log.error("relay_bad_reply", error=str(exc), rows=len(pending))
                pending = await self._narrow(pending, f"a reply that does not fit the batch: {exc}")
                await asyncio.sleep(self.backoff.next_delay())
            except (DatabaseUnavailable, asyncpg.PostgresError) as exc:
                # Without our session the lock is gone too: another relay may have taken over and sent this batch.
                log.warning("relay_database_error", error=repr(exc), rows=len(pending))
                pending = []
                await self._disconnect()
                await asyncio.sleep(self.backoff.next_delay())
            except Exception:
                # A bug must not end the loop silently with rows pending; retry slowly and say so loudly.
                log.exception("relay_failed", rows=len(pending))
                pending = []
                await asyncio.sleep(self.backoff.cap_s)

    async def _send(self, updates: Sequence[aggregate_pb2.TpsUpdate]) -> dict[int, aggregate_pb2.UpdateRefusal]:
        """One ApplyUpdates call; the refused updates by index (every other one aggregate has taken)."""
        assert self._channel is not None
        stub = aggregate_stub(self._channel)
        request = aggregate_pb2.ApplyUpdatesRequest(updates=updates)
        response = await stub.ApplyUpdates(
            request, timeout=self.call_timeout_s, metadata=self.credential.metadata(APPLY_METHOD)
        )
        self.calls += 1
        if len(response.outcomes) != len(updates):
            raise _Rejected(f"{len(response.outcomes)} outcomes for {len(updates)} updates")
        refusals = {r.index: r for r in response.refusals}
        refused = [i for i, o in enumerate(response.outcomes) if o == aggregate_pb2.UPDATE_OUTCOME_REFUSED]
        if sorted(refusals) != refused:
            raise _Rejected(f"refusals for {sorted(refusals)[:10]}, outcomes REFUSED for {refused[:10]}")
        return refusals

    async def _settle(self, conn: Session, taken: list[int], dead: list[_Dead]) -> None:
        """Mark what aggregate took delivered, and set the dead rows aside (with an alarm each), at once."""
        await conn.execute(
            QUERIES.relay_settle,
            taken,
            [d.row["id"] for d in dead],
            [d.reason for d in dead],
            ["\n".join(d.fields) for d in dead],
        )
        self.delivered += len(taken)
        metrics.DELIVERED.inc(len(taken))
        self.dead_lettered += len(dead)
        for d in dead:
            log.error(
                "relay_dead_letter",
                outbox_id=d.row["id"], tps=d.row["tps"], contest=d.row["contest"], version=d.row["version"],
                reason=d.reason, hint="`suara tally dead-letters`; repair, then `suara tally dead-letters redeliver`",
            )  # fmt: skip

    def _narrowed(self, claimed: list[asyncpg.Record]) -> list[asyncpg.Record]:
        """The claimed rows, cut to the part of a failed batch still to be searched, if one is."""
        if self._suspect is None:
            return claimed
        until, size = self._suspect
        within = [r for r in claimed if r["id"] <= until][:size]
        if within:
            return within
        self._suspect = None  # every row of the failed batch went through: nothing left to search
        return claimed

    async def _narrow(self, pending: list[asyncpg.Record], reason: str) -> list[asyncpg.Record]:
        """After a batch failed as a whole for what may be one of its rows: the batch to send next.

        Half of it (the other half is claimed again afterwards), down to one row; that row, once it
        has failed alone LONE_ATTEMPTS times, is set aside and the relay goes on. Unless rows keep
        failing alone with nothing delivered in between: then aggregate is at fault, not the rows,
        and the row stays to be retried with backoff.
        """
        if len(pending) > 1:
            half = pending[: len(pending) // 2]
            self._suspect = (pending[-1]["id"], len(half))
            log.warning("relay_batch_split", rows=len(pending), next=len(half), reason=reason)
            self._lone_failures = 0
            return half
        if not pending:
            return pending
        self._lone_failures += 1
        if self._lone_failures < LONE_ATTEMPTS:
            return pending
        if self._dead_since_delivery >= DEAD_LETTER_STORM:
            log.error(
                "relay_stuck", rows_set_aside=self._dead_since_delivery, reason=reason, outbox_id=pending[0]["id"]
            )
            return pending
        conn = await self._connection()
        await self._settle(conn, [], [_Dead(pending[0], f"failed alone {self._lone_failures} times: {reason}", ())])
        self._dead_since_delivery += 1
        self._lone_failures = 0
        self._suspect = None  # found it; should another row of that batch be bad too, the search starts over
        return []

    def _log_rpc_failure(self, exc: grpc.aio.AioRpcError, rows: int) -> None:
        code = exc.code()
        transient = code in TRANSIENT
        # Anything else (a revoked credential, a bug) needs an operator; the rows stay pending meanwhile.
        (log.info if transient else log.error)(
            "relay_call_failed", code=code.name, error=exc.details(), rows=rows, attempt=self.backoff.failures + 1
        )

    async def _note_progress(self) -> None:
        async with self._progress:
            self._progress.notify_all()

    async def _sleep_or_wake(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _connection(self) -> Session:
        # Its own connection, not the pool's: it holds the session lock and the LISTEN.
        if self._session is None or self._session.is_closed():
            self.active = False
            session = await Session.connect(self.database_url, application=APPLICATION_NAME)
            try:
                await session.add_listener(CHANNEL, self._notified)
            except BaseException:
                await session.close()
                raise
            self._session = session
            self._wake.set()  # rows may have arrived while disconnected
        return self._session

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def _disconnect(self) -> None:
        session, self._session, self.active = self._session, None, False
        if session is not None:
            await session.close(grace_s=2.0)
