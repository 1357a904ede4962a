"""A site directory: files land by rename over the old ones, and identical files are hard links."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import NamedTuple

from services.publish.files import SiteFile
from services.publish.sinks.base import check_path

# Files per thread hop: the hop then costs nothing next to the file work, and the event loop is
# never blocked. Four threads: on a virtual disk a file create or rename waits on the device, and
# threads overlap those waits; on tmpfs nothing waits and one thread would do (the GIL).
_CHUNK = 256
_LOCAL_THREADS = 4
_TMP_SUFFIX = ".tmp"


def _pieces(f: SiteFile) -> list[tuple[str, bytes]]:
    """(path, bytes) in the order they must land: the `.gz` before the file it belongs to."""
    gz = f.gzipped()
    return [(f.path + ".gz", gz), (f.path, f.body)] if gz is not None else [(f.path, f.body)]


def _body(f: SiteFile) -> bytes:
    return f.body


def _gz(f: SiteFile) -> bytes:
    gz = f.gzipped()
    if gz is None:
        raise ValueError(f"{f.path} has no .gz")
    return gz


class _Template(NamedTuple):
    """A file that `same_as` names, as read back at the start of a write call."""

    body: bytes
    gz: bool  # its `.gz` is there and is exactly the `.gz` of `body` (so it can be linked too)


class LocalSink:
    """A directory tree; each file replaced atomically by a rename over it.

    No fsync per file: at ~2M files it would dominate a rebuild, and it only matters when the machine
    itself goes down. A killed publisher leaves at most some `*.tmp` files (see `sweep_temp`) and some
    files of an unfinished cycle, which the next cycle rewrites from its cursor.

    A file with `same_as` (a rebuild's "no data yet" TPS files, identical across a contest) is a hard
    link to that file, made under a temp name and renamed over the target like a written file, at a
    fraction of the cost of writing it. Links share an inode, safe only
    because nothing here ever writes *into* an existing file: every write goes to a new inode (a temp
    file created with O_EXCL) or is a new link, and lands by rename, which replaces the directory entry
    alone. So when one linked path is later rewritten (the TPS gets a form), the template and the other
    links keep their bytes. Keep it so: no O_TRUNC, no append, no in-place rewrite, ever.
    """

    # Reading a small file back costs far less than writing it and its .gz: publish compares before it
    # rewrites files that rarely change (status files).
    cheap_reads = True

    def __init__(self, root: Path, *, chunk: int = _CHUNK, threads: int = _LOCAL_THREADS) -> None:
        self.root = root
        self._chunk = chunk
        self._threads = threads
        # Directories known to exist: a rebuild writes millions of files into the same few thousand.
        self._dirs: set[str] = set()
        self._counter = itertools.count()  # next() is atomic under the GIL: unique temp names across threads
        self._pid = os.getpid()

    def describe(self) -> str:
        return f"local:{self.root}"

    async def write(self, files: Sequence[SiteFile]) -> None:
        chunks = [files[i : i + self._chunk] for i in range(0, len(files), self._chunk)]
        it = iter(chunks)
        templates = await self._templates(files)
        # A template's path → the path links to it are made from: itself, until it has as many links as
        # the file system allows (ext4: 65,000; scale 1.0 has ~800k TPS per contest), then the last file
        # written whole in its place. Per call: within a call no path is written twice, so such a file
        # keeps the template's bytes while the call lasts.
        sources: dict[str, str] = {}

        async def worker() -> None:
            for chunk in it:  # the workers share one iterator: each chunk is taken once
                await asyncio.to_thread(self._write_chunk, chunk, templates, sources)

        async with asyncio.TaskGroup() as tg:
            for _ in range(min(self._threads, len(chunks))):
                tg.create_task(worker())

    async def _templates(self, files: Sequence[SiteFile]) -> dict[str, _Template]:
        """The files this call's `same_as` name, read back: a file links to one only if its body is the
        template's (checked per file, a bytes compare), and its `.gz` only if the template's `.gz` is right.

        A template this same call writes is not used: the files of a call land in any order.
        """
        wanted = {f.same_as for f in files if f.same_as is not None}
        if not wanted:
            return {}
        wanted -= {f.path for f in files}
        return await asyncio.to_thread(self._read_templates, wanted)

    def _read_templates(self, paths: set[str]) -> dict[str, _Template]:
        templates: dict[str, _Template] = {}
        for path in paths:
            try:
                body = (self.root / path).read_bytes()
            except OSError:
                continue  # missing: every file naming it is written whole
            gz = SiteFile(path, body).gzipped()
            try:
                gz_ok = gz is not None and (self.root / (path + ".gz")).read_bytes() == gz
            except OSError:
                gz_ok = False
            templates[path] = _Template(body, gz_ok)
        return templates

    def _write_chunk(self, files: Sequence[SiteFile], templates: dict[str, _Template], sources: dict[str, str]) -> None:
        root = str(self.root)
        for f in files:
            template = None if f.same_as is None else templates.get(f.same_as)
            if template is None or template.body != f.body:
                for path, data in _pieces(f):
                    self._write_one(f"{root}/{path}", data)
                continue
            target, source = f"{root}/{f.path}", f"{root}/{f.same_as}"
            if f.compressible:  # the .gz first, as for a written file
                if template.gz:
                    self._link_one(target + ".gz", source + ".gz", partial(_gz, f), sources)
                else:
                    self._write_one(target + ".gz", _gz(f))
            self._link_one(target, source, partial(_body, f), sources)

    def _link_one(self, target: str, source: str, data: Callable[[], bytes], sources: dict[str, str]) -> None:
        """`target` becomes a hard link to `source` (or to what replaces it, see `write`), atomically:
        linked under a temp name, then renamed over. If linking fails (another file system, no hard
        links, too many links, the source gone), `data()` is written instead: a file is never lost."""
        parent, _, name = target.rpartition("/")
        if parent not in self._dirs:
            Path(parent).mkdir(parents=True, exist_ok=True)
            self._dirs.add(parent)
        tmp = f"{parent}/.{name}.{self._pid}.{next(self._counter)}{_TMP_SUFFIX}"
        try:
            os.link(sources.get(source, source), tmp)
        except OSError as exc:
            self._write_one(target, data())
            if exc.errno == errno.EMLINK:  # the source is full: link the next ones to this new file
                sources[source] = target
            return
        try:
            os.replace(tmp, target)  # noqa: PTH105  (hot path, see _write_one)
        except BaseException:
            with contextlib.suppress(OSError):
                Path(tmp).unlink()
            raise

    def _write_one(self, target: str, data: bytes) -> None:
        # Plain str and os calls on this path: it runs millions of times per rebuild, and pathlib's
        # objects per step would cost a good part of what the syscalls cost.
        parent, _, name = target.rpartition("/")
        if parent not in self._dirs:
            Path(parent).mkdir(parents=True, exist_ok=True)
            self._dirs.add(parent)
        tmp = f"{parent}/.{name}.{self._pid}.{next(self._counter)}{_TMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # 0644: the web server reads it
        except FileNotFoundError:  # the directory went away behind our cache
            self._dirs.discard(parent)
            Path(parent).mkdir(parents=True, exist_ok=True)
            self._dirs.add(parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                view = memoryview(data)
                while view:  # os.write may write less than asked
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(tmp, target)  # noqa: PTH105  (hot path, see above)
        except BaseException:
            with contextlib.suppress(OSError):
                Path(tmp).unlink()
            raise

    async def exists(self, path: str) -> bool:
        return await asyncio.to_thread(os.path.isfile, self.root / check_path(path))

    async def read(self, path: str) -> bytes | None:
        # Inline, not in a thread: what is read back is a small status file the page cache holds, and
        # handing such a read to a thread costs more than the read.
        try:
            return (self.root / check_path(path)).read_bytes()
        except FileNotFoundError:
            return None

    async def sweep_temp(self) -> int:
        """Remove the temp files a killed run left behind; returns how many. Call it before writing starts."""

        def _sweep() -> int:
            removed = 0
            for dirpath, _dirs, names in os.walk(self.root):
                for name in names:
                    if name.startswith(".") and name.endswith(_TMP_SUFFIX):
                        with contextlib.suppress(OSError):  # gone already, or not ours to remove
                            Path(dirpath, name).unlink()
                            removed += 1
            return removed

        return await asyncio.to_thread(_sweep)

    async def close(self) -> None:
        return None
