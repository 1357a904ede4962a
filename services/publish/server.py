"""A running publisher: follows aggregate's changes in a loop, and reports over gRPC (health, GetStatus).

One publisher is active per database (a session advisory lock); a second one waits as a hot
standby, so two never write the same site at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import asyncpg
import grpc
import structlog

from services.publish import metrics
from services.publish.cycle import CycleResult, Publisher
from services.publish.queries import QUERIES
from services.publish.rehearsal import site_sink
from services.publish.sinks import sink_from_url
from services.publish.sinks.base import Sink
from suara.client import service_names
from suara.client.aggregate_stub import aggregate_stub
from suara.client.stubs import tally_stub
from suara.registry.catalog import fetch_contests, fetch_election
from suara.runtime.auth.certificate import load_credential
from suara.runtime.auth.client import caller_channel
from suara.runtime.backoff import Backoff
from suara.runtime.database import Database, DatabaseUnavailable, Session
from suara.runtime.grpc_server import Server, create_server, serve_with_metrics
from suara.runtime.metrics import REFRESH_TIMEOUT_S, MetricsServer, watch_pool
from suara.runtime.settings import SettingError, Settings
from suara.runtime.tls import server_tls
from suara.runtime.wire import MESSAGE_LIMITS, SMALL_REQUEST_BYTES
from suara.v1 import aggregate_pb2, publish_pb2, publish_pb2_grpc

log = structlog.get_logger(__name__)

SERVICE_NAME = service_names.PUBLISH.full_name
LOCK_KEY: Final = 0x5355415250554253  # "SUARPUBS": distinct from the relay's and the migration lock
CHANNEL_OPTIONS = (
    ("grpc.max_reconnect_backoff_ms", 2000),
    *MESSAGE_LIMITS,
)


FENCE_TIMEOUT_S: Final = 5.0  # a lock session that cannot say it still holds the lock within this has lost it


class LeadershipLost(Exception):
    """This publisher's lock is gone (or its session cannot say it holds it): another may be active."""


_RETRYABLE: tuple[type[BaseException], ...] = (grpc.aio.AioRpcError, OSError, DatabaseUnavailable, LeadershipLost)


def credential_path(settings: Settings) -> Path:
    return Path(settings.publish.credential) if settings.publish.credential else settings.data_dir / "publish.key.json"


def sink_for(settings: Settings) -> Sink:
    return sink_from_url(
        settings.publish.to or str(settings.site.dir), s3_endpoint_url=settings.publish.s3_endpoint_url or None
    )


def photo_links(settings: Settings) -> str | None:
    """Where the TPS files link photos (URL/{aa}/{sha256}) when tally keeps them in a bucket; None: they are
    copied into the site, from tally, as with a local photo store (which readers cannot reach)."""
    if not settings.tally.photo_store.startswith("s3://"):
        return None
    base = settings.publish.photo_public_url or (
        f"{settings.publish.public_url.rstrip('/')}/foto" if settings.publish.public_url else ""
    )
    if not base:
        raise SettingError(
            "SUARA_PHOTO_PUBLIC_URL",
            "",
            f"the public URL of {settings.tally.photo_store} (or SUARA_PUBLIC_URL, when SUARA_PUBLIC_URL/foto/ "
            "serves it): with an s3:// SUARA_PHOTO_STORE the TPS files link photos there",
        )
    return base.rstrip("/")


class PublishService(publish_pb2_grpc.PublishServiceServicer):
    def __init__(self, db: Database, publisher: Publisher) -> None:
        self.db = db
        self.publisher = publisher

    async def GetStatus(
        self, request: publish_pb2.GetStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> publish_pb2.GetStatusResponse:
        row = await self.db.fetchrow(QUERIES.status)
        status = publish_pb2.PublishStatus(
            snapshot=row["snapshot"],
            aggregate_sequence=row["sequence"],
            chain_position=row["chain_position"] or 0,
            chain_hash=row["chain_hash"] or "",
            files=row["files"] or 0,
            full_rebuild=bool(row["full_rebuild"]),
            sink=self.publisher.sink.describe(),
        )
        if row["updated_at"] is not None:
            status.published_at.FromDatetime(row["updated_at"])
        with contextlib.suppress(grpc.aio.AioRpcError):
            newest = await self.publisher.aggregate.Changes(aggregate_pb2.ChangesRequest(since=0, limit=1), timeout=2)
            status.aggregate_newest = newest.sequence
        return publish_pb2.GetStatusResponse(status=status)


class PublishApp:
    """Pool, channels, sink, the publisher loop and the status server. `start()` then `stop()`."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        channels: list[grpc.aio.Channel],
        publisher: Publisher,
        server: Server,
        port: int,
    ) -> None:
        self.settings = settings
        self.db = db
        self.channels = channels
        self.publisher = publisher
        self.server = server
        self.port = port
        self.active = False
        self.last: CycleResult | None = None
        self._task: asyncio.Task[None] | None = None
        self._cycled = asyncio.Condition()
        self._cycles = 0
        self.lag = metrics.Lag()
        self.last_success: float | None = None  # unix time of this publisher's last turn of its loop that did not fail

    @classmethod
    async def create(cls, settings: Settings, database_url: str, sink: Sink | None = None) -> PublishApp:
        tls = server_tls(settings, "publish")  # its status is public: one server-authenticated listener
        publisher, db, channels = await connect(settings, database_url, sink)
        service = PublishService(db, publisher)
        server, port = create_server(
            lambda s: publish_pb2_grpc.add_PublishServiceServicer_to_server(service, s),
            [SERVICE_NAME],
            host=settings.publish.host,
            port=settings.publish.port,
            default_request_limit=SMALL_REQUEST_BYTES,  # GetStatus takes nothing
            tls=tls,
            metrics_service="publish" if settings.metrics_on else None,
        )
        if settings.metrics_on:
            watch_pool("publish", db)
        return cls(settings, db, channels, publisher, server, port)

    async def start(self) -> None:
        await self.server.start()
        self._task = asyncio.create_task(self._run(), name="publish-loop")
        log.info(
            "publish_serving", address=f"{self.settings.publish.host}:{self.port}", sink=self.publisher.sink.describe()
        )

    async def stop(self, grace: float = 5.0) -> None:
        """The loop first (its lock goes to a standby), then the status server, given `grace`, and the rest."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.server.stop(grace)
        await close(self.publisher, self.db, self.channels)
        log.info("publish_stopped")

    async def sample_metrics(self) -> None:
        """The gauges read at a scrape: what the site shows (the cursor), and aggregate's head now."""
        metrics.LEADER.set(1 if self.active else 0)
        row = await self.db.fetchrow(QUERIES.status)
        now = time.time()
        published_at = None if row["updated_at"] is None else row["updated_at"].timestamp()
        metrics.SNAPSHOT_AGE.set(0.0 if published_at is None else max(0.0, now - published_at))
        if self.last_success is not None:
            metrics.LAST_SUCCESS.set(self.last_success)
        newest = await self.publisher.aggregate.Changes(
            aggregate_pb2.ChangesRequest(since=row["sequence"], limit=1), timeout=REFRESH_TIMEOUT_S / 2
        )
        self.lag.saw(newest.sequence, now)
        sequences, seconds = self.lag.behind(row["sequence"], now)
        metrics.LAG_SEQUENCES.set(sequences)
        metrics.LAG_SECONDS.set(seconds)

    async def wait_cycles(self, n: int = 1) -> None:
        """Until `n` more cycles have run (each may have found nothing to publish)."""
        async with self._cycled:
            target = self._cycles + n
            await self._cycled.wait_for(lambda: self._cycles >= target)

    async def _run(self) -> None:
        backoff = Backoff(base_s=0.2, cap_s=5.0)
        lock: Session | None = None  # the connection holding the session lock
        try:
            while True:
                try:
                    if lock is not None and lock.is_closed():
                        await self.publisher.stop_bulk()  # no longer the active one: a standby may take over
                        stale, lock = lock, None  # forgotten first: a failing release must not leave it held
                        await self.db.release(stale)
                    if lock is None:
                        self.active = False
                        lock = await self.db.session()
                    if not self.active:
                        self.active = bool(await lock.fetchval(QUERIES.try_lock, LOCK_KEY))
                        if self.active:
                            log.info("publish_active", sink=self.publisher.sink.describe())
                            await prepare(self.publisher.sink)
                    if self.active:
                        self.publisher.fence = _holding(lock)
                        result = await self.publisher.cycle()
                        if result is not None:
                            self.last = result
                            metrics.CYCLE_SECONDS.observe(result.seconds)
                            metrics.FILES_WRITTEN.inc(result.files)
                        self.lag.saw(self.publisher.aggregate_head)
                    # The active one: a cycle done (with or without news). A standby: the lock looked at and
                    # found held, ready to take over; so a standby that stops following is seen.
                    self.last_success = time.time()
                    backoff.reset()
                    delay = self.settings.publish.interval_s
                except _RETRYABLE as exc:
                    if isinstance(exc, LeadershipLost):
                        self.active = False  # looked at again next turn: the lock, or a new session for it
                    delay = backoff.next_delay()
                    log.warning("publish_cycle_failed", error=_describe(exc), retry_in_s=round(delay, 2))
                except Exception:  # a bug must not stop the site from updating for good: log it loudly, retry
                    delay = backoff.next_delay()
                    log.exception("publish_cycle_crashed", retry_in_s=round(delay, 2))
                async with self._cycled:
                    self._cycles += 1
                    self._cycled.notify_all()
                await asyncio.sleep(delay)
        finally:
            await self.publisher.stop_bulk()  # before the lock goes: only the active publisher writes
            if lock is not None:
                with contextlib.suppress(DatabaseUnavailable):  # hand the lock to a standby now, not at pool close
                    await lock.execute("SELECT pg_advisory_unlock_all()")
                await self.db.release(lock)


def _holding(lock: Session) -> Callable[[], Awaitable[None]]:
    async def fence() -> None:
        try:
            held = await asyncio.wait_for(lock.fetchval(QUERIES.holds_lock, LOCK_KEY), FENCE_TIMEOUT_S)
        except TimeoutError as exc:
            raise LeadershipLost(f"the lock's session did not answer within {FENCE_TIMEOUT_S:g} s") from exc
        except DatabaseUnavailable as exc:
            raise LeadershipLost(f"the lock's session is gone ({exc})") from exc
        if not held:
            raise LeadershipLost("the publish lock is no longer held by this publisher")

    return fence


async def prepare(sink: Sink) -> None:
    """Before the first cycle: what a killed publisher left behind is swept."""
    removed = await sink.sweep_temp()
    if removed:
        log.info("swept_temp_files", removed=removed)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


async def connect(
    settings: Settings, database_url: str, sink: Sink | None = None
) -> tuple[Publisher, Database, list[grpc.aio.Channel]]:
    path = credential_path(settings)
    if not path.exists():
        raise SystemExit(
            f"publish needs a reader credential for aggregate at {path}: "
            "issue a client certificate with `suara pki issue --role reader` (its certificate and key in one file), "
            "or, in plaintext mode, `suara service issue --name publish --role reader --out " + str(path) + "`"
        )
    credential = load_credential(path)
    photo_base = photo_links(settings)  # before the pool: a missing URL stops it at once
    db = await Database.open(database_url, size=min(settings.database.pool_size, 4), application="suara-publish")
    try:
        async with db.acquire() as conn:
            contests = await fetch_contests(conn)
            election_id, rehearsal = await fetch_election(conn)
    except BaseException:
        await db.close()
        raise
    aggregate_channel = caller_channel(settings.peers.aggregate, settings, credential, options=CHANNEL_OPTIONS)
    tally_channel = caller_channel(settings.peers.tally, settings, credential, options=CHANNEL_OPTIONS)
    publisher = Publisher(
        db,
        site_sink(sink or sink_for(settings), election_id, rehearsal),
        aggregate_stub(aggregate_channel),
        tally_stub(tally_channel),
        contests,
        photo_base=photo_base,
        bulk_interval_s=settings.publish.bulk_interval_s,
    )
    return publisher, db, [aggregate_channel, tally_channel]


async def close(publisher: Publisher, db: Database, channels: list[grpc.aio.Channel]) -> None:
    for channel in channels:
        await channel.close()
    await publisher.sink.close()
    await db.close()


async def published_sequence(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """The last aggregate change published (0: nothing yet): a site directory lost since needs a rebuild."""
    return int(await conn.fetchval(QUERIES.published_sequence) or 0)


async def rebuild(settings: Settings, database_url: str) -> CycleResult:
    """Rewrite every file from aggregate's current state (disaster recovery: the site or bucket was lost)."""
    publisher, db, channels = await connect(settings, database_url)
    try:
        async with db.acquire() as conn:
            if not await conn.fetchval(QUERIES.try_lock, LOCK_KEY):
                raise SystemExit("another publisher is active on this database: stop it before a rebuild")
            await prepare(publisher.sink)
            started = time.perf_counter()
            result = await publisher.cycle(full=True)
            assert result is not None  # a full cycle always publishes
            await publisher.bulk_done()  # the bulk downloads are part of the rebuilt site
            log.info("rebuilt", files=result.files, s=round(time.perf_counter() - started, 2))
            return result
    finally:
        await close(publisher, db, channels)


async def serve(settings: Settings, database_url: str) -> None:
    app = await PublishApp.create(settings, database_url)
    exporter = MetricsServer(settings.publish.host, settings.publish.metrics_port) if settings.metrics_on else None
    await serve_with_metrics(app.start, app.stop, settings.shutdown_grace_s, exporter, app.sample_metrics)
