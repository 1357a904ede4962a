"""What tally lets in: a bound on work in flight, and a gate closed while the database is away.

Refusing early and cheaply is what keeps the service answering under overload
and during a database outage: a caller gets RESOURCE_EXHAUSTED or UNAVAILABLE
with a retry-after hint at once, instead of a call that hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from suara.runtime.database import Database, DatabaseUnavailable
from suara.runtime.errors import ResourceExhausted

log = structlog.stdlib.get_logger("suara.tally.admission")


class InFlight:
    def __init__(self, limit: int, retry_after_ms: int) -> None:
        self.limit = limit
        self.retry_after_ms = retry_after_ms
        self.current = 0

    def acquire(self, n: int) -> None:
        if self.current + n > self.limit and self.current > 0:
            raise ResourceExhausted(
                f"tally is at capacity ({self.current} forms in flight); retry after {self.retry_after_ms} ms",
                retry_after_ms=self.retry_after_ms,
            )
        self.current += n

    def release(self, n: int) -> None:
        self.current -= n


class DatabaseGate:
    """Open while the database answers. Closed when it is unreachable; a probe reopens it.

    A timeout alone does not close it: under load a busy PostgreSQL outlives a call's deadline now and
    then, and closing on that would answer every call UNAVAILABLE meanwhile and turn health NOT_SERVING,
    which a load balancer reads as "take tally out". So a
    timeout asks the database once (SELECT 1 within CHECK_S): it closes only if that gets no answer,
    as with a frozen server. Every call keeps its own deadline meanwhile.
    """

    PROBE_INTERVAL_S = 0.2
    CHECK_S = 1.0

    def __init__(
        self,
        db: Database,
        retry_after_ms: int,
        on_change: Callable[[bool], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self._db = db
        self._retry_after_ms = retry_after_ms
        self.on_change = on_change  # told True/False as the gate opens and closes (the app wires health to it)
        self.available = True
        self._probe: asyncio.Task[None] | None = None
        self._notify: asyncio.Task[None] | None = None
        self.checking: asyncio.Task[None] | None = None  # a timeout being checked: slow or gone?

    def check(self) -> None:
        if not self.available:
            raise self.error()

    def error(self, *, timed_out: bool = False) -> DatabaseUnavailable:
        """`timed_out`: the call's deadline passed, so the form may have been stored after all."""
        if timed_out:
            message = (
                "the database did not answer within the deadline; the form may or may not be stored. "
                "Resend the same form later: if it was stored, the answer is DUPLICATE with its receipt"
            )
        else:
            message = "the database is unreachable; nothing was stored. Resend the same form later (it is safe)"
        return DatabaseUnavailable(message, timed_out=timed_out, retry_after_ms=self._retry_after_ms)

    def mark_down(self, error: DatabaseUnavailable) -> None:
        if not self.available:
            return
        if error.timed_out:
            if self.checking is None or self.checking.done():
                self.checking = asyncio.create_task(self._check_after_timeout(error))
            return
        self._close(error)

    async def _check_after_timeout(self, error: DatabaseUnavailable) -> None:
        try:
            async with self._db.acquire(wait_s=self.CHECK_S) as conn:
                await conn.fetchval("SELECT 1", timeout=self.CHECK_S)
        except Exception as probe_error:
            log.error("database_not_answering", error=repr(probe_error.__cause__ or probe_error))
            self._close(error)
            return
        log.warning(
            "database_slow",
            error="a call's database work outlived its deadline, but the database answers: tally keeps accepting",
        )

    def _close(self, error: DatabaseUnavailable) -> None:
        if not self.available:
            return
        self.available = False
        log.error("database_unreachable", error=repr(error.__cause__ or error))
        self._probe = asyncio.create_task(self._wait_for_database())
        if self.on_change is not None:
            self._notify = asyncio.create_task(self.on_change(False))

    async def _wait_for_database(self) -> None:
        await self._db.pool.expire_connections()  # every pooled connection may be dead now
        while True:
            await asyncio.sleep(self.PROBE_INTERVAL_S)
            try:
                async with self._db.acquire(wait_s=1.0) as conn:
                    await conn.fetchval("SELECT 1", timeout=1.0)
            except Exception:
                continue
            self.available = True
            log.info("database_back")
            if self.on_change is not None:
                await self.on_change(True)
            return

    async def close(self) -> None:
        for task in (self.checking, self._probe):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
