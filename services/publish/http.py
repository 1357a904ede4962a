"""`suara publish serve`: the published site over HTTP, as nginx with `gzip_static on` would serve it.

Headers come from cache.py, the one table every sink and server uses, so a cache in front of this
server (deploy/nginx/cache.conf) sees the same policy as one in front of a bucket.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
from aiohttp import hdrs, web

from services.publish.cache import SECURITY_HEADERS, cache_control_for, content_type_for

log = structlog.stdlib.get_logger(__name__)

# A missing file is often one about to be published (a TPS whose first form is in flight): let
# caches absorb a burst of misses, but only for seconds.
MISSING_CACHE_CONTROL = "public, max-age=5"

_SITE_DIR = web.AppKey("site_dir", Path)


def _resolve(site_dir: Path, rel: str) -> Path | None:
    """The file under site_dir that `rel` names, or None when it names nothing there (or escapes it).

    Its few stat calls run inline: microseconds on a local disk, less than a hop to a thread.
    """
    parts = [p for p in rel.split("/") if p]
    if any(p in (".", "..") or "\\" in p or "\x00" in p for p in parts):
        return None
    target = site_dir.joinpath(*parts) if parts else site_dir
    if target.is_dir():
        target = target / "index.html"
    try:
        # resolve() follows symlinks: one pointing out of the site is refused like `..`.
        resolved = target.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not resolved.is_relative_to(site_dir) or not resolved.is_file():
        return None
    return target


async def _handle(request: web.Request) -> web.StreamResponse:
    site_dir = request.app[_SITE_DIR]
    rel = request.match_info["path"]
    target = _resolve(site_dir, rel)
    if target is None:
        response: web.StreamResponse = web.Response(
            status=404,
            text="tidak ditemukan\n",
            content_type="text/plain",
            headers={hdrs.CACHE_CONTROL: MISSING_CACHE_CONTROL},
        )
    else:
        name = target.relative_to(site_dir).as_posix()
        headers = {hdrs.CACHE_CONTROL: cache_control_for(name)}
        if name.endswith(".gz"):
            # Asked for the .gz itself: those are its bytes, not an encoding of the JSON.
            headers[hdrs.CONTENT_TYPE] = "application/gzip"
        else:
            headers[hdrs.CONTENT_TYPE] = content_type_for(name)
            if target.with_name(target.name + ".gz").is_file():
                # Set on the plain answer too, so a shared cache never hands the plain copy to a
                # gzip client or the reverse (FileResponse sets it on the .gz answer itself).
                headers[hdrs.VARY] = hdrs.ACCEPT_ENCODING
        # FileResponse picks `X.gz` beside X when the client accepts gzip (Content-Encoding and Vary
        # set), and answers ETag / If-None-Match / If-Modified-Since / Range itself.
        response = web.FileResponse(target, headers=headers)
    return response


async def _secure(request: web.Request, response: web.StreamResponse) -> None:
    # Every answer, 404s included: nginx (deploy/nginx) adds the same with `always`.
    response.headers.update(SECURITY_HEADERS)


async def _log_request(request: web.Request, response: web.StreamResponse) -> None:
    # on_response_prepare runs once the status is final (FileResponse turns 200 into 304, 206, 404 late).
    log.debug(
        "http_request",
        method=request.method,
        path=request.path,
        status=response.status,
        encoding=response.headers.get(hdrs.CONTENT_ENCODING),
        length=response.content_length,
    )


def make_app(site_dir: Path) -> web.Application:
    app = web.Application()
    app[_SITE_DIR] = site_dir.resolve()
    app.router.add_get("/{path:.*}", _handle)  # add_get answers HEAD too
    app.on_response_prepare.append(_secure)
    app.on_response_prepare.append(_log_request)
    return app


@contextlib.asynccontextmanager
async def serve_app(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve `app` until the block exits; yields its base URL ("http://host:port", the real port when 0)."""
    runner = web.AppRunner(app, access_log=None)  # our own debug line per request replaces aiohttp's
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        url = f"http://{bound_host if ':' not in bound_host else f'[{bound_host}]'}:{bound_port}"
        log.info("site_serving", url=url)
        yield url
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def serve_site(site_dir: Path, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve the site in `site_dir` until the block exits; yields its base URL."""
    async with serve_app(make_app(site_dir), host, port) as url:
        yield url
