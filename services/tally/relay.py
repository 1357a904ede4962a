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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import asyncpg
import grpc
import structlog

from services.tally.queries import QUERIES
from suara.client import service_names
from suara.client.aggregate_stub import aggregate_stub
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
                    pending = list(await conn.fetch(QUERIES.relay_pending, self.batch))
                    if not pending:
                        self._caught_up += 1
                        await self._note_progress()
                        await self._sleep_or_wake(self.poll_interval_s)
                        continue
                await self._send(pending)
                ids = [row["id"] for row in pending]
                await conn.execute(QUERIES.relay_mark_delivered, ids)
                self.delivered += len(ids)
                pending = []
                self.backoff.reset()
            except grpc.aio.AioRpcError as exc:
                self._log_rpc_failure(exc, len(pending))
                await asyncio.sleep(self.backoff.next_delay())
            except _Rejected as exc:
                log.error("relay_bad_reply", error=str(exc), rows=len(pending))
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

    async def _send(self, rows: Sequence[asyncpg.Record]) -> None:
        assert self._channel is not None
        stub = aggregate_stub(self._channel)
        request = aggregate_pb2.ApplyUpdatesRequest(updates=[tps_update(r) for r in rows])
        response = await stub.ApplyUpdates(
            request, timeout=self.call_timeout_s, metadata=self.credential.metadata(APPLY_METHOD)
        )
        self.calls += 1
        if len(response.outcomes) != len(rows):
            raise _Rejected(f"{len(response.outcomes)} outcomes for {len(rows)} updates")

    def _log_rpc_failure(self, exc: grpc.aio.AioRpcError, rows: int) -> None:
        code = exc.code()
        transient = code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.ABORTED,
            grpc.StatusCode.CANCELLED,
        )
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
