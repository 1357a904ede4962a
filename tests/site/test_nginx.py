"""deploy/nginx with the real nginx: site.conf serves a site as cache.py says, cache.conf keeps
serving the last good copy while the origin is down."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
from pathlib import Path

from aiohttp import web

from services.publish.cache import cache_control_for, content_type_for
from services.publish.http import make_app, serve_app
from tests.site.client import Reply, fetch, raw_get, security_problems
from tests.site.nginx import run_nginx
from tests.site.sample import SampleSite


def site_files(site: Path) -> list[str]:
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file() and p.suffix != ".gz")


async def test_site_conf_serves_the_site_like_cache_py(
    nginx: str, deploy_dir: Path, sample: SampleSite, tmp_path: Path
) -> None:
    site = sample.site_dir
    async with run_nginx(nginx, deploy_dir / "site.conf", tmp_path / "nginx", SITE_DIR=str(site)) as url:
        files = site_files(site)
        assert len(files) > 50
        for rel in files:
            body = (site / rel).read_bytes()
            plain = await fetch(f"{url}/{rel}")
            assert plain.status == 200, rel
            assert plain.body == body, rel
            assert plain.headers["Cache-Control"] == cache_control_for(rel), rel
            assert plain.headers["Content-Type"] == content_type_for(rel), rel
            assert not security_problems(plain), rel
            assert "Content-Encoding" not in plain.headers, rel

            zipped = await fetch(f"{url}/{rel}", {"Accept-Encoding": "gzip"})
            assert zipped.headers["Cache-Control"] == cache_control_for(rel), rel
            assert zipped.headers["Content-Type"] == content_type_for(rel), rel
            assert not security_problems(zipped), rel
            if (site / (rel + ".gz")).exists():
                assert zipped.headers["Content-Encoding"] == "gzip", rel  # gzip_static, not compressed per request
                assert zipped.body == (site / (rel + ".gz")).read_bytes(), rel
                assert gzip.decompress(zipped.body) == body, rel
                assert zipped.headers["Vary"] == "Accept-Encoding", rel
            else:
                assert "Content-Encoding" not in zipped.headers, rel

        root = await fetch(url + "/")
        assert root.body == (site / "index.html").read_bytes()
        assert root.headers["Content-Type"] == content_type_for("index.html")
        assert root.headers["Cache-Control"] == cache_control_for("index.html")
        missing = await fetch(f"{url}/pemilu/hhcw/{sample.contest}/99.json")
        assert missing.status == 404
        assert missing.headers["Cache-Control"] == "public, max-age=5"
        assert not security_problems(missing)
        assert not security_problems(root)
        history = await fetch(f"{url}/suara/riwayat/{sample.contest}.json")
        assert history.status == 200 and "immutable" not in history.headers["Cache-Control"]
        for target in ("/../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/wilayah/../../../etc/passwd"):
            assert await raw_get(url, target) in (400, 404), target


# The origin in the cache test says every file expires after a second, so the test sees nginx
# serve copies past their max-age without waiting the real policy's 5-3600 s.
SHORT = "public, max-age=1, stale-if-error=86400"


def _short_lived_origin(site: Path, seen: list[tuple[str, str | None, str | None]]) -> web.Application:
    """make_app's site with max-age=1 on every file, noting each request that reaches it."""

    async def short_lived(request: web.Request, response: web.StreamResponse) -> None:
        seen.append((request.path_qs, request.headers.get("Cache-Control"), request.headers.get("Pragma")))
        if response.status == 200:
            response.headers["Cache-Control"] = SHORT

    app = make_app(site)
    app.on_response_prepare.append(short_lived)
    return app


async def test_cache_conf_serves_stale_copies_while_the_origin_is_down(
    nginx: str, deploy_dir: Path, sample: SampleSite, tmp_path: Path
) -> None:
    c = sample.contest
    paths = [
        "/",
        "/app.js",
        "/suara/snapshot.json",
        f"/pemilu/hhcw/{c}.json",
        f"/pemilu/hhcw/{c}/{'/'.join(sample.tps_path)}.json",
        f"/wilayah/pemilu/{c}/0.json",
    ]
    variants: list[dict[str, str]] = [{}, {"Accept-Encoding": "gzip, deflate, br"}]
    seen: list[tuple[str, str | None, str | None]] = []
    async with contextlib.AsyncExitStack() as origin_up:
        origin = await origin_up.enter_async_context(serve_app(_short_lived_origin(sample.site_dir, seen)))
        cache_dir = str(tmp_path / "cache")
        async with run_nginx(
            nginx, deploy_dir / "cache.conf", tmp_path / "nginx", ORIGIN=origin, CACHE_DIR=cache_dir
        ) as url:
            first: dict[tuple[str, int], Reply] = {}
            for path in paths:
                for i, headers in enumerate(variants):
                    reply = await fetch(url + path, headers)
                    assert reply.status == 200, path
                    assert reply.headers["X-Cache-Status"] == "MISS", path
                    assert reply.headers["Cache-Control"] == SHORT, path  # the origin's, passed on
                    assert not security_problems(reply), path  # once each, though the origin sends them too
                    direct = await fetch(origin + path, headers)
                    assert reply.body == direct.body, path
                    assert reply.headers.get("Content-Encoding") == direct.headers.get("Content-Encoding"), path
                    first[path, i] = reply
            assert first["/app.js", 1].headers["Content-Encoding"] == "gzip"
            assert "Content-Encoding" not in first["/app.js", 0].headers

            # Cache busting by query string or request headers does not reach the origin.
            busted = await fetch(
                f"{url}/suara/snapshot.json?t={time.time()}", {"Cache-Control": "no-cache", "Pragma": "no-cache"}
            )
            assert busted.status == 200
            assert busted.body == first["/suara/snapshot.json", 0].body
            assert [s for s in seen if "?" in s[0] or s[1] or s[2]] == []

            await origin_up.aclose()
            assert await _refused(origin)

            # Poll until every copy has outlived its max-age (nginx then tries the origin, fails, and
            # answers STALE): bounded by the 1 s max-age plus slack, never a fixed sleep.
            stale: set[tuple[str, int]] = set()
            deadline = time.monotonic() + 15
            while len(stale) < len(first):
                assert time.monotonic() < deadline, f"never served stale: {set(first) - stale}"
                for (path, i), before in first.items():
                    reply = await fetch(url + path, variants[i])
                    assert reply.status == 200, path
                    assert reply.body == before.body, path
                    assert reply.headers.get("Content-Encoding") == before.headers.get("Content-Encoding"), path
                    assert not security_problems(reply), path
                    if reply.headers["X-Cache-Status"] == "STALE":
                        stale.add((path, i))
                await asyncio.sleep(0.2)  # between rounds of an external process's answers


async def _refused(base: str) -> bool:
    try:
        await fetch(base + "/")
    except OSError:
        return True
    return False
