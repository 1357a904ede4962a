"""HTTP as the tests need it: raw bytes (no decompression) and raw request targets (no normalising)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDictProxy


@dataclass(frozen=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


def security_problems(reply: Reply) -> list[str]:
    """How the reply's security headers differ from cache.py's SECURITY_HEADERS (each exactly once)."""
    from services.publish.cache import SECURITY_HEADERS

    return [
        f"{name}: {reply.headers.getall(name, [])!r}"
        for name, value in SECURITY_HEADERS.items()
        if reply.headers.getall(name, []) != [value]
    ]


async def fetch(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> Reply:
    """One request; `Accept-Encoding` is only what `headers` says (aiohttp would add gzip itself)."""
    sent = {"Accept-Encoding": "identity"} | (headers or {})
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.request(method, url, headers=sent, allow_redirects=False) as response,
    ):
        return Reply(response.status, response.headers, await response.read())


async def raw_get(base: str, target: str) -> int:
    """The status for a request target sent byte for byte (clients would resolve `..` first)."""
    parts = urlsplit(base)
    assert parts.hostname is not None and parts.port is not None
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status_line = await reader.readline()
        await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    return int(status_line.split()[1])
