"""The load test's HTTP reader: a copy served from a cache's store is remembered with its max-age, so
that verification's recheck of a mismatch outwaits the cache (nginx ignores a client's no-cache)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from loadtest.site import CACHE_LAG_CAP_S, DirSite, HttpSite

# What each path answers with: (extra headers). The test's own table, not the reader's.
RESPONSES = {
    "hit.json": {"X-Cache-Status": "HIT", "Cache-Control": "public, max-age=15, stale-while-revalidate=60"},
    "stale.json": {"X-Cache-Status": "STALE", "Cache-Control": "public, max-age=5"},
    "aged.json": {"Age": "3", "Cache-Control": "max-age=20"},
    "miss.json": {"X-Cache-Status": "MISS", "Cache-Control": "public, max-age=15"},
    "origin.json": {"Cache-Control": "public, max-age=15"},
    "forever.json": {"X-Cache-Status": "HIT", "Cache-Control": "public, max-age=31536000, immutable"},
}


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, dict[str, dict[str, str]]]]:
    responses = dict(RESPONSES)  # this test's own, which it may change

    async def handle(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        headers = responses.get(name)
        if headers is None:
            return web.Response(status=404)
        if f"{name}.next" in responses:  # answered once, then the next headers (a cache done refreshing)
            responses[name] = responses.pop(f"{name}.next")
        body = headers.get("X-Body", "{}").encode()
        return web.Response(body=body, headers=headers, content_type="application/json")

    app = web.Application()
    app.router.add_get("/{name}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", responses
    finally:
        await runner.cleanup()


async def test_a_copy_from_a_cache_is_waited_out_for_its_max_age(
    server: tuple[str, dict[str, dict[str, str]]],
) -> None:
    site = HttpSite(server[0])
    try:
        for name in RESPONSES:
            assert await site.read(name) == b"{}"
        assert await site.read("missing.json") is None
        assert site.cache_lag_s(["hit.json"]) == 16.0
        assert site.cache_lag_s(["stale.json"]) == 6.0
        assert site.cache_lag_s(["aged.json"]) == 21.0
        assert site.cache_lag_s(["hit.json", "stale.json", "aged.json"]) == 21.0  # the longest of them
        # A MISS was stored by the cache on its way: later reads may get that copy until it expires.
        assert site.cache_lag_s(["miss.json"]) == 16.0
        # No cache in between (no X-Cache-Status, no Age), or nothing read: nothing to outwait.
        assert site.cache_lag_s(["origin.json", "missing.json", "never-read.json"]) == 0.0
        assert site.cache_lag_s(["forever.json"]) == CACHE_LAG_CAP_S
    finally:
        await site.close()


async def test_a_copy_served_stale_while_the_cache_refreshes_is_read_again(
    server: tuple[str, dict[str, dict[str, str]]],
) -> None:
    url, responses = server
    site = HttpSite(url)
    try:
        # The cache answers STALE (old bytes) once; asked again it has the fresh copy.
        responses["refreshing.json"] = {"X-Cache-Status": "STALE", "Cache-Control": "max-age=15", "X-Body": "old"}
        responses["after.json"] = {"X-Cache-Status": "HIT", "Cache-Control": "max-age=15", "X-Body": "new"}
        responses["refreshing.json.next"] = responses["after.json"]
        assert await site.read("refreshing.json") == b"new"
        assert await site.read("stale.json") == b"{}"  # the fixture's STALE answers the same bytes each time
    finally:
        await site.close()


async def test_a_later_read_from_the_origin_forgets_the_cached_copy(
    server: tuple[str, dict[str, dict[str, str]]],
) -> None:
    url, responses = server
    site = HttpSite(url)
    try:
        await site.read("hit.json")
        assert site.cache_lag_s(["hit.json"]) > 0
        responses["hit.json"] = {"Cache-Control": "public, max-age=15"}  # the cache gone: the origin answers
        await site.read("hit.json")
        assert site.cache_lag_s(["hit.json"]) == 0.0
    finally:
        await site.close()


async def test_a_directory_has_no_cache_in_front(tmp_path: Path) -> None:
    site = DirSite(tmp_path)
    try:
        assert site.cache_lag_s(["anything.json"]) == 0.0
    finally:
        await site.close()
