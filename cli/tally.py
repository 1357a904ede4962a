"""`suara tally serve`: run the tally gRPC service."""

from __future__ import annotations

import argparse
from typing import Any

from cli.embedded import database_url
from suara.runtime.settings import Settings


def add_parser(sub: Any) -> None:
    tally = sub.add_parser("tally", help="the tally service (accepts signed C.Hasil forms)")
    tsub = tally.add_subparsers(dest="tally_command", metavar="ACTION", required=True)
    p = tsub.add_parser(
        "serve",
        help="serve the tally gRPC API until SIGTERM/SIGINT",
        description=(
            "Serve tally's gRPC API (suara.v1.TallyService, health, reflection) on SUARA_TALLY_HOST:SUARA_TALLY_PORT.\n"
            "On SIGTERM health turns NOT_SERVING first, then in-flight calls finish (SUARA_SHUTDOWN_GRACE_S)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", help="bind address (default: SUARA_TALLY_HOST)")
    p.add_argument("--port", type=int, help="port, 0 for any free one (default: SUARA_TALLY_PORT)")
    p.set_defaults(handler=run_serve)


async def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import replace

    from services.tally.server import serve

    if args.host:
        settings = replace(settings, tally=replace(settings.tally, host=args.host))
    if args.port is not None:
        settings = replace(settings, tally=replace(settings.tally, port=args.port))
    with database_url(settings) as url:
        await serve(settings, url)
    return 0
