"""Reading the published site, from a directory or over HTTP: the load test's only view of the system's state."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import aiohttp


class SiteError(Exception):
    """The site could not be read (not a missing file: that is None)."""


class Site(Protocol):
    def describe(self) -> str: ...

    async def read(self, path: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        ...

    async def close(self) -> None: ...


class DirSite:
    """A site directory; reads go to a thread pool, so thousands can be in flight beside the event loop."""

    def __init__(self, root: Path, threads: int = 8) -> None:
        self.root = root
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="site-read")

    def describe(self) -> str:
        return str(self.root)

    def _read(self, path: str) -> bytes | None:
        try:
            return (self.root / path).read_bytes()
        except FileNotFoundError:
            return None

    async def read(self, path: str) -> bytes | None:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._read, path)

    async def close(self) -> None:
        self._executor.shutdown(wait=False)


class HttpSite:
    """A site over HTTP(S). `Cache-Control: no-cache` asks any cache in between to revalidate: the load test
    measures what the origin publishes, and a CDN's max-age=15 would otherwise hide fresh files."""

    def __init__(self, base: str, connections: int = 32, retries: int = 3) -> None:
        self.base = base.rstrip("/")
        self._retries = retries
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    def describe(self) -> str:
        return self.base

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections),
                timeout=aiohttp.ClientTimeout(total=30),
                headers={"Cache-Control": "no-cache"},
            )
        return self._session

    async def read(self, path: str) -> bytes | None:
        error: Exception | None = None
        for attempt in range(self._retries + 1):
            try:
                async with self._open().get(f"{self.base}/{path}") as response:
                    if response.status == 404:
                        return None
                    if response.status >= 500:
                        raise SiteError(f"{path}: HTTP {response.status}")
                    response.raise_for_status()
                    return await response.read()
            except (aiohttp.ClientError, TimeoutError, SiteError) as exc:
                error = exc
                await asyncio.sleep(0.1 * 2**attempt)  # a transient origin or network error: a short backoff
        raise SiteError(f"cannot read {self.base}/{path}: {error}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def open_site(spec: str | Path, threads: int = 8) -> Site:
    text = str(spec)
    if text.startswith(("http://", "https://")):
        return HttpSite(text)
    root = Path(text)
    if not root.is_dir():
        raise SiteError(f"the site directory {root} does not exist")
    return DirSite(root, threads)


async def read_json(site: Site, path: str) -> Any | None:
    data = await site.read(path)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError as exc:  # a half-written file cannot happen (atomic renames), a corrupted one can
        raise SiteError(f"{path} is not JSON: {exc}") from exc
