"""A sink that remembers what it wrote, can die midway like a publisher killed mid-cycle, and can hold a
write until released (a publisher paused mid-cycle while the world moves on)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from services.publish.files import SiteFile
from services.publish.sinks.local import LocalSink


class RecordingSink:
    """A LocalSink that also remembers every path written (to prove a cycle wrote only what changed),
    and can be told to die after N files (a publisher killed midway)."""

    def __init__(self, inner: LocalSink, die_after: int | None = None) -> None:
        self.inner = inner
        self.cheap_reads = inner.cheap_reads
        self.paths: list[str] = []
        self.calls: list[list[str]] = []  # the paths of each write call, in order: what had landed before what
        self.die_after = die_after
        self._hold: asyncio.Event | None = None  # set: the held write goes on
        self.holding = asyncio.Event()  # a write is being held

    def hold_next(self) -> None:
        """The next write waits for `release()`; `holding` is set once it does."""
        self._hold = asyncio.Event()
        self.holding.clear()

    def release(self) -> None:
        if self._hold is not None:
            self._hold.set()

    async def write(self, files: Sequence[SiteFile]) -> None:
        if self._hold is not None and not self._hold.is_set():
            self.holding.set()
            await self._hold.wait()
        if self.die_after is not None and len(self.paths) + len(files) > self.die_after:
            keep = max(0, self.die_after - len(self.paths))
            await self.inner.write(files[:keep])
            self.paths.extend(f.path for f in files[:keep])
            raise KilledMidway(f"killed after {self.die_after} files")
        await self.inner.write(files)
        self.paths.extend(f.path for f in files)
        self.calls.append([f.path for f in files])

    async def exists(self, path: str) -> bool:
        return await self.inner.exists(path)

    async def read(self, path: str) -> bytes | None:
        return await self.inner.read(path)

    async def sweep_temp(self) -> int:
        return await self.inner.sweep_temp()

    async def close(self) -> None:
        await self.inner.close()

    def describe(self) -> str:
        return f"recording {self.inner.describe()}"


class KilledMidway(Exception):
    pass
