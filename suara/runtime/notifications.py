"""Following a PostgreSQL NOTIFY channel for as long as a process runs.

A listener keeps a connection of its own with LISTEN on the channel and hands every payload to
`on_message`. It reconnects with backoff when that connection is lost. Notifications sent while
nobody listened are gone for good, so every (re)connection first calls `on_reset`: a cache that
follows the channel then forgets all it holds and reads the table again. A connection that dies
without a word (a network partition) is found by a probe every `probe_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog

from suara.runtime.backoff import Backoff
from suara.runtime.database import DatabaseUnavailable, Session

log = structlog.stdlib.get_logger("suara.notifications")


class ChannelListener:
    """LISTEN on `channel` at `url` until `stop()`. `listening` is set while the LISTEN stands."""

    def __init__(
        self,
        url: str,
        channel: str,
        on_message: Callable[[str], None],
        on_reset: Callable[[], None],
        *,
        application: str,
        probe_s: float = 5.0,
    ) -> None:
        self.url = url
        self.channel = channel
        self.on_message = on_message
        self.on_reset = on_reset
        self.application = application
        self.probe_s = probe_s
        self.listening = asyncio.Event()
        self.connections = 0  # LISTENs established: more than one means it reconnected
        self._backoff = Backoff(0.1, 5.0)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"listen-{self.channel}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _notified(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        try:
            self.on_message(payload)
        except Exception:  # one bad payload must not end the listening
            log.exception("notification_failed", channel=channel, payload=payload)

    async def _run(self) -> None:
        while True:
            try:
                await self._listen_once()
            except DatabaseUnavailable as exc:
                log.warning("listener_lost", channel=self.channel, error=str(exc))
            except Exception as exc:  # a bad URL or a refused login: keep trying, loudly
                log.error("listener_failed", channel=self.channel, error=f"{type(exc).__name__}: {exc}")
            self.on_reset()  # entries cached from now until the LISTEN stands again may be stale: keep none
            await asyncio.sleep(self._backoff.next_delay())

    async def _listen_once(self) -> None:
        """One connection: LISTEN, then wait until it is lost (or a probe fails)."""
        session = await Session.connect(self.url, application=self.application)
        try:
            lost = asyncio.Event()
            session.connection.add_termination_listener(lambda _conn: lost.set())
            await session.add_listener(self.channel, self._notified)
            self.on_reset()  # what was revoked while nobody listened is forgotten with the rest
            self.connections += 1
            self.listening.set()
            self._backoff.reset()
            if self.connections > 1:
                log.info("listening_again", channel=self.channel)
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), self.probe_s)
                if not lost.is_set():
                    await session.execute("SELECT 1", timeout_s=self.probe_s)
        finally:
            self.listening.clear()
            await session.close(grace_s=0.5)
