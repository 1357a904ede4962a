"""`suara publish run|rebuild|serve|status`: the static site, written and served."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

from cli.embedded import service_database_url
from cli.outbox import add_tls_arguments
from cli.serving import add_bind_arguments, serve_section
from suara.runtime.settings import Settings

_SINKS = (
    "The site goes to SUARA_SITE_DIR (default ./site), or with SUARA_PUBLISH_TO=s3://bucket/prefix to an\n"
    "S3-compatible bucket (SUARA_S3_ENDPOINT_URL for MinIO and the like; credentials as boto3 reads them).\n"
    "The layout: docs/layout.md."
)


def add_parser(sub: Any) -> None:
    publish = sub.add_parser("publish", help="the publish service: the public static site")
    psub = publish.add_subparsers(dest="publish_command", metavar="ACTION", required=True)

    p = psub.add_parser(
        "run",
        help="follow aggregate's changes and publish them, until SIGTERM/SIGINT",
        description=(
            "Every SUARA_PUBLISH_INTERVAL_S, read aggregate's changes since the last snapshot and rewrite\n"
            "only the files they touch (totals up the tree, TPS files, status files, photos), then the\n"
            "snapshot pointer suara/snapshot.json. The first run writes everything. Needs a reader credential\n"
            "(SUARA_PUBLISH_CREDENTIAL, default SUARA_DATA_DIR/publish.key.json: `suara service issue --name\n"
            "publish --role reader`); reads the chain head and photos from tally at SUARA_TALLY_ADDRESS.\n"
            "Reports on gRPC (health, suara.v1.PublishService/GetStatus) at SUARA_PUBLISH_HOST:SUARA_PUBLISH_PORT.\n\n"
            + _SINKS
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _site_arg(p)
    add_bind_arguments(p, "publish", host=False)
    p.set_defaults(handler=run_run)

    r = psub.add_parser(
        "rebuild",
        help="rewrite the whole site from aggregate's current state (disaster recovery)",
        description=(
            "Rewrite every file from scratch from aggregate's current state: for a lost site directory or\n"
            "bucket. The data files come out byte-identical to what the running publisher writes for the same\n"
            "state. Refuses while another publisher is active on the database.\n\n" + _SINKS
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _site_arg(r)
    r.set_defaults(handler=run_rebuild)

    s = psub.add_parser(
        "serve",
        help="serve a site directory over HTTP, with the cache headers a CDN would get",
        description=(
            "Serve the static site in --site-dir on http://HOST:PORT/ with each file's Cache-Control, and its\n"
            "precompressed .gz to clients that accept gzip. For production put nginx or a CDN in front\n"
            "(deploy/nginx/). Stops on SIGTERM/SIGINT."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _site_arg(s)
    s.add_argument("--http-port", type=int, help="port, 0 for any free one (default: SUARA_HTTP_PORT)")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1; 0.0.0.0 for everyone)")
    s.set_defaults(handler=run_serve_site)

    st = psub.add_parser(
        "status",
        help="ask a running publisher where it stands",
        description="Print publish's GetStatus as JSON: snapshot, aggregate sequence and lag, chain head, sink.",
    )
    st.add_argument("--address", help="host:port of publish (default: SUARA_PUBLISH_HOST:SUARA_PUBLISH_PORT)")
    add_tls_arguments(st, "publish's")
    st.set_defaults(handler=run_status)


def _site_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--site-dir", type=Path, help="the site directory (default: SUARA_SITE_DIR)")


def _with_site(args: argparse.Namespace, settings: Settings) -> Settings:
    return replace(settings, site=replace(settings.site, dir=args.site_dir)) if args.site_dir else settings


async def run_run(args: argparse.Namespace, settings: Settings) -> int:
    from services.publish.server import serve

    return await serve_section(args, _with_site(args, settings), "publish", serve)


async def run_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    from services.publish.server import rebuild

    settings = _with_site(args, settings)
    with service_database_url(settings, "publish") as url:
        result = await rebuild(settings, url)
    print(
        f"rebuilt snapshot {result.snapshot} at aggregate sequence {result.sequence}: {result.files:,} files "
        f"({result.areas:,} areas, {result.tps_files:,} TPS, {result.photos:,} photos) in {result.seconds:.1f} s",
        flush=True,
    )
    return 0


async def run_serve_site(args: argparse.Namespace, settings: Settings) -> int:
    from services.publish.http import serve_site

    site_dir = args.site_dir or settings.site.dir
    if not (site_dir / "index.html").exists():
        print(f"note: {site_dir}/index.html does not exist yet; `suara publish run` writes the site", flush=True)
    port = settings.site.http_port if args.http_port is None else args.http_port
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve_site(site_dir, args.host, port) as url:
        print(f"serving {site_dir} at {url}/ (Ctrl-C to stop)", flush=True)
        await stop.wait()
    return 0


async def run_status(args: argparse.Namespace, settings: Settings) -> int:
    import grpc
    from google.protobuf.json_format import MessageToDict

    from cli.outbox import tls_of
    from suara.client.stubs import publish_stub
    from suara.runtime.tls import open_channel
    from suara.v1 import publish_pb2

    address = args.address or f"{settings.publish.host}:{settings.publish.port}"
    async with open_channel(address, tls_of(args, settings)) as channel:
        try:
            reply = await publish_stub(channel).GetStatus(publish_pb2.GetStatusRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            print(f"publish at {address} did not answer: {exc.code().name} {exc.details()}", flush=True)
            return 1
    with contextlib.suppress(BrokenPipeError):
        print(json.dumps(MessageToDict(reply.status, always_print_fields_with_no_presence=True), indent=2), flush=True)
    return 0
