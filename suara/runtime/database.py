"""Connections to PostgreSQL: the pool every service uses, connections held for a session, one-off ones.

A database that is not there, or that does not answer in time, comes out of
`Database` and `Session` as one exception, DatabaseUnavailable (an
UNAVAILABLE: the work may be asked for again later), whatever asyncpg or the
socket raised. Every other error (a bad query, a broken constraint) passes
through as it is. This is the one place that knows which errors mean "gone".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any

import asyncpg

from suara.runtime.errors import Unavailable

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    # asyncpg's own state errors: a multi-host URL (target_session_attrs=read-write) whose hosts all answer
    # read-only (no primary yet: a failover, or the cluster lost its consensus store), or a pooled idle
    # connection still consuming the FATAL of a server shutting down (a primary being demoted).
    asyncpg.exceptions.InternalClientError,
)


class DatabaseUnavailable(Unavailable):
    """The database is not there, or did not answer in time (`timed_out`): the work may or may not be done."""

    def __init__(self, message: str, *, timed_out: bool = False, retry_after_ms: int | None = None) -> None:
        super().__init__(message, retry_after_ms=retry_after_ms)
        self.timed_out = timed_out

    @classmethod
    def of(cls, error: BaseException) -> DatabaseUnavailable:
        return cls(
            f"the database is unavailable ({type(error).__name__}); retry later",
            timed_out=isinstance(error, TimeoutError),
        )


class _Translate:
    """`with _TRANSLATE:` turns a connection failure raised in the block into DatabaseUnavailable."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if error is not None and isinstance(error, _CONNECTION_ERRORS):
            raise DatabaseUnavailable.of(error) from error


_TRANSLATE = _Translate()


class deadline:
    """Database work that must be done by loop time `when`: past it, DatabaseUnavailable (timed out).

    A class around asyncio.timeout_at rather than a generator: it wraps every call tally serves."""

    __slots__ = ("_timeout",)

    def __init__(self, when: float) -> None:
        self._timeout = asyncio.timeout_at(when)

    def __aenter__(self) -> Awaitable[asyncio.Timeout]:
        return self._timeout.__aenter__()  # the timeout's own coroutine: no frame of ours on the way in

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        with _TRANSLATE:
            await self._timeout.__aexit__(kind, error, tb)  # the deadline's own TimeoutError, if it passed
            _TRANSLATE.__exit__(kind, error, tb)  # a failure raised in the block


class _Queries:
    """The one-statement calls, on a pool or a connection, with failures translated."""

    _target: Any  # asyncpg.Pool or asyncpg.Connection: the same methods

    async def fetch(self, query: str, *args: Any, timeout_s: float | None = None) -> list[asyncpg.Record]:
        with _TRANSLATE:
            rows: list[asyncpg.Record] = await self._target.fetch(query, *args, timeout=timeout_s)
        return rows

    async def fetchrow(self, query: str, *args: Any, timeout_s: float | None = None) -> Any:
        """The first row (an asyncpg.Record), or None."""
        with _TRANSLATE:
            return await self._target.fetchrow(query, *args, timeout=timeout_s)

    async def fetchval(self, query: str, *args: Any, timeout_s: float | None = None) -> Any:
        with _TRANSLATE:
            return await self._target.fetchval(query, *args, timeout=timeout_s)

    async def execute(self, query: str, *args: Any, timeout_s: float | None = None) -> str:
        with _TRANSLATE:
            status: str = await self._target.execute(query, *args, timeout=timeout_s)
        return status


class Session(_Queries):
    """One connection kept for a while (a session advisory lock, a LISTEN): its own, or one taken from a pool."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection
        self._target = connection

    @classmethod
    async def connect(cls, url: str, *, application: str, connect_s: float = 5.0) -> Session:
        with _TRANSLATE:
            conn = await asyncpg.connect(url, timeout=connect_s, server_settings={"application_name": application})
        return cls(conn)

    def is_closed(self) -> bool:
        try:
            return bool(self.connection.is_closed())
        except asyncpg.InterfaceError:
            # A pooled connection whose server went away (a failover): asyncpg has already handed it back
            # to its pool and detached it from this proxy, which then refuses every call.
            return True

    async def add_listener(self, channel: str, callback: Callable[..., object]) -> None:
        with _TRANSLATE:
            await self.connection.add_listener(channel, callback)

    async def close(self, grace_s: float = 2.0) -> None:
        """Close politely within `grace_s`, else drop the socket. Never raises: the connection may be gone."""
        if self.is_closed():
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.connection.close(), grace_s)
        if not self.is_closed():
            self.connection.terminate()


async def _keep(conn: asyncpg.Connection) -> None:
    """Services keep no session state (no SET, LISTEN or temp tables), so a released connection needs no reset."""


class _Acquire:
    """A pooled connection for an `async with`, counted in `Database.waiting` while it is being got."""

    __slots__ = ("_conn", "_db", "_timeout")

    def __init__(self, db: Database, timeout: float | None) -> None:
        self._db = db
        self._timeout = timeout
        self._conn: Any = None

    async def __aenter__(self) -> asyncpg.Connection:
        self._db.waiting += 1
        try:
            self._conn = await self._db.pool.acquire(timeout=self._timeout)
        finally:
            self._db.waiting -= 1
        return self._conn

    async def __aexit__(self, *exc: object) -> None:
        await self._db.pool.release(self._conn)


class Database(_Queries):
    """The connection pool of a service process. Every acquire goes through one place, which counts
    those waiting (`waiting`, the metrics' suara_db_pool_waiting)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.waiting = 0
        self.closed = False
        self._target = pool

    # The one-statement calls, as asyncpg's Pool makes them, but through the one counted acquire.
    async def fetch(self, query: str, *args: Any, timeout_s: float | None = None) -> list[asyncpg.Record]:
        with _TRANSLATE:
            async with _Acquire(self, None) as conn:
                rows: list[asyncpg.Record] = await conn.fetch(query, *args, timeout=timeout_s)
        return rows

    async def fetchrow(self, query: str, *args: Any, timeout_s: float | None = None) -> Any:
        """The first row (an asyncpg.Record), or None."""
        with _TRANSLATE:
            async with _Acquire(self, None) as conn:
                return await conn.fetchrow(query, *args, timeout=timeout_s)

    async def fetchval(self, query: str, *args: Any, timeout_s: float | None = None) -> Any:
        with _TRANSLATE:
            async with _Acquire(self, None) as conn:
                return await conn.fetchval(query, *args, timeout=timeout_s)

    async def execute(self, query: str, *args: Any, timeout_s: float | None = None) -> str:
        with _TRANSLATE:
            async with _Acquire(self, None) as conn:
                status: str = await conn.execute(query, *args, timeout=timeout_s)
        return status

    def sizes(self) -> tuple[int, int, int]:
        """(connections open, of which idle, most allowed)."""
        return self.pool.get_size(), self.pool.get_idle_size(), self.pool.get_max_size()

    @classmethod
    async def open(cls, url: str, *, size: int = 8, application: str = "suara", **kwargs: Any) -> Database:
        with _TRANSLATE:
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=size,
                timeout=2.0,  # connect timeout: an unreachable database must not hang a call
                # Custom plans always: every hot query takes its rows as arrays (unnest), and a generic plan
                # made while the tables were nearly empty keeps scanning them whole as they grow; planning
                # costs far less. And an index probe priced as what it is where the working set is in memory
                # (SSD or cache): at the default 4.0 the planner joins a batch to its rows by hashing whole
                # tables.
                server_settings={
                    "application_name": application,
                    "synchronous_commit": "on",
                    "plan_cache_mode": "force_custom_plan",
                    "random_page_cost": "1.1",
                },
                reset=_keep,  # the default reset costs a round trip on every release
                **kwargs,
            )
        return cls(pool)

    @contextlib.asynccontextmanager
    async def acquire(
        self, *, wait_s: float | None = None, within_s: float | None = None
    ) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for the block. `wait_s` bounds the wait for a connection; `within_s` the
        whole block, acquiring included. Failures raised in the block come out as DatabaseUnavailable."""
        with _TRANSLATE:
            async with asyncio.timeout(within_s), _Acquire(self, wait_s) as conn:
                yield conn

    async def session(self) -> Session:
        """A pooled connection to keep across calls (a session lock); hand it back with `release`."""
        self.waiting += 1
        try:
            with _TRANSLATE:
                return Session(await self.pool.acquire())
        finally:
            self.waiting -= 1

    async def release(self, session: Session) -> None:
        with _TRANSLATE:
            await self.pool.release(session.connection)

    async def close(self) -> None:
        self.closed = True
        await self.pool.close()


@contextlib.asynccontextmanager
async def connect(url: str) -> AsyncIterator[asyncpg.Connection]:
    """A one-off connection (the CLI's tools, migrations)."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        yield conn
    finally:
        await conn.close()
