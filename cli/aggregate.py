"""`suara aggregate serve`: run the aggregate gRPC service."""

from __future__ import annotations

import argparse
from typing import Any

from cli.serving import add_bind_arguments, serve_section
from suara.runtime.settings import Settings


def add_parser(sub: Any) -> None:
    aggregate = sub.add_parser("aggregate", help="the aggregate service (rolls TPS results up to every level)")
    asub = aggregate.add_subparsers(dest="aggregate_command", metavar="ACTION", required=True)
    p = asub.add_parser(
        "serve",
        help="serve the aggregate gRPC API until SIGTERM/SIGINT",
        description=(
            "Serve aggregate's gRPC API (suara.v1.AggregateService, health, reflection) on\n"
            "SUARA_AGGREGATE_HOST:SUARA_AGGREGATE_PORT. At start it seeds one row per area and contest from\n"
            "the registry (once per `suara registry load`). On SIGTERM health turns NOT_SERVING first, then\n"
            "in-flight calls finish (SUARA_SHUTDOWN_GRACE_S)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_bind_arguments(p, "aggregate")
    p.set_defaults(handler=run_serve)


async def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    from services.aggregate.server import serve

    return await serve_section(args, settings, "aggregate", serve)
