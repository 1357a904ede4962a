"""`suara aggregate serve`: run the aggregate gRPC service."""

from __future__ import annotations

import argparse
from typing import Any

from cli.embedded import database_url
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
    p.add_argument("--host", help="bind address (default: SUARA_AGGREGATE_HOST)")
    p.add_argument("--port", type=int, help="port, 0 for any free one (default: SUARA_AGGREGATE_PORT)")
    p.set_defaults(handler=run_serve)


async def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import replace

    from services.aggregate.server import serve

    if args.host:
        settings = replace(settings, aggregate=replace(settings.aggregate, host=args.host))
    if args.port is not None:
        settings = replace(settings, aggregate=replace(settings.aggregate, port=args.port))
    with database_url(settings) as url:
        await serve(settings, url)
    return 0
