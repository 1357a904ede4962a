"""`suara tally serve`: run the tally gRPC service."""

from __future__ import annotations

import argparse
from typing import Any

from cli.serving import add_bind_arguments, serve_section
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
    add_bind_arguments(p, "tally")
    p.set_defaults(handler=run_serve)


async def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    from services.tally.server import serve

    return await serve_section(args, settings, "tally", serve)
