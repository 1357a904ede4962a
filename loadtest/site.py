"""Reading the published site, from a directory or over HTTP: the load test's only view of the system's state."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable
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

    def cache_lag_s(self, paths: Iterable[str]) -> float:
        """How long a cache in front of the site may go on serving what these paths last read (0: none)."""
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

    def cache_lag_s(self, paths: Iterable[str]) -> float:
        return 0.0

    async def close(self) -> None:
        self._executor.shutdown(wait=False)


# Longest a recheck waits for a cache in front of the site to let go of a copy it served.
CACHE_LAG_CAP_S = 60.0
REFRESH_WAIT_S = 0.5  # a cache refreshing a stale copy in the background has it within this (on loopback)
_MAX_AGE = re.compile(r"max-age=(\d+)")
# A copy a cache served stale while it fetches a fresh one (nginx's proxy_cache_background_update).
_REFRESHING = {"STALE", "UPDATING"}


class HttpSite:
    """A site over HTTP(S). `Cache-Control: no-cache` asks any cache in between to revalidate, but a cache may
    ignore it (suara's nginx does, so a reload never reaches the bucket): a file that came through a cache
    (it says so: nginx's X-Cache-Status, or RFC 9111's Age) is remembered with its max-age, so that a recheck
    of a mismatch waits until the cache's copy has expired; a copy served stale while the cache refreshes
    it is read once more, a moment later."""

    def __init__(self, base: str, connections: int = 32, retries: int = 3) -> None:
        self.base = base.rstrip("/")
        self._retries = retries
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._cached_for: dict[str, float] = {}  # path → the max-age of a copy a cache served it from

    def describe(self) -> str:
        return self.base

    def cache_lag_s(self, paths: Iterable[str]) -> float:
        lag = max((self._cached_for.get(p, 0.0) for p in paths), default=0.0)
        return min(CACHE_LAG_CAP_S, lag + 1.0) if lag else 0.0

    def _note_cache(self, path: str, headers: Any) -> None:
        through_cache = "X-Cache-Status" in headers or "Age" in headers
        found = _MAX_AGE.search(headers.get("Cache-Control", ""))
        if through_cache and found:
            self._cached_for[path] = float(found.group(1))
        else:
            self._cached_for.pop(path, None)

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections),
                timeout=aiohttp.ClientTimeout(total=30),
                headers={"Cache-Control": "no-cache"},
            )
        return self._session

    async def read(self, path: str) -> bytes | None:
        data, refreshing = await self._get(path)
        if refreshing:
            await asyncio.sleep(REFRESH_WAIT_S)
            data, _ = await self._get(path)
        return data

    async def _get(self, path: str) -> tuple[bytes | None, bool]:
        """The file (None: missing), and whether a cache served it stale while fetching a fresh copy."""
        error: Exception | None = None
        for attempt in range(self._retries + 1):
            try:
                async with self._open().get(f"{self.base}/{path}") as response:
                    if response.status == 404:
                        return None, False
                    if response.status >= 500:
                        raise SiteError(f"{path}: HTTP {response.status}")
                    response.raise_for_status()
                    self._note_cache(path, response.headers)
                    refreshing = response.headers.get("X-Cache-Status", "").upper() in _REFRESHING
                    return await response.read(), refreshing
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
