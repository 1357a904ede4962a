"""What every sink promises, and the one rule of paths they share.

Every sink writes each file whole: a reader sees the old file or the new one, never a mix. A file's
`.gz` sibling is written before the file itself, so a reader that finds the new file also finds the
matching `.gz`. `write` returns once every file of the call is in place; within one call files may
land in any order (a sink may write them in parallel), so what must come after them — the snapshot
pointer, or the files whose `same_as` names a file — goes in a later call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from services.publish.files import SiteFile


class Sink(Protocol):
    cheap_reads: bool  # reading a file back costs much less than writing it (publish may compare first)

    async def write(self, files: Sequence[SiteFile]) -> None:
        """Write each file and, when `f.gzipped()` is not None, its `path + ".gz"` first.

        Whatever a sink does with `f.same_as` (a local directory links), what lands is `f.body` and its `.gz`.
        """

    async def exists(self, path: str) -> bool:
        """Whether `path` is there (to skip re-uploading immutable photos)."""

    async def read(self, path: str) -> bytes | None:
        """The bytes at `path`, or None when there is nothing."""

    async def sweep_temp(self) -> int:
        """Remove what a killed writer left behind (temp files not yet renamed into place); how many.

        Called once, before this writer's first write."""

    async def close(self) -> None: ...

    def describe(self) -> str:
        """Where the files go, for logs."""


def check_path(path: str) -> str:
    if path.startswith("/") or not path or ".." in path.split("/"):
        raise ValueError(f"site paths are relative and stay inside the site: {path!r}")
    return path
