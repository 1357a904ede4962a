"""`suara aggregate serve`: run the aggregate gRPC service; `suara aggregate forward`: feed another one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
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

    p = asub.add_parser(
        "forward",
        help="feed this instance's totals of some areas to another aggregate (a province's to the nation's)",
        description=(
            "Federation. Follow this aggregate instance (--from) and send every change of the areas it\n"
            "counts (--area, repeatable: the subtree roots, e.g. a province code) to another instance\n"
            "(--to) as versioned area updates (ApplyAreaUpdates), until SIGTERM/SIGINT. Each row is sent\n"
            "with its own change sequence as version, so a resend (a lost reply, a restart, an outage of\n"
            "either side) changes nothing at the receiver: nothing is kept on disk, and after a restart\n"
            "every row is sent once more and answered DUPLICATE. Either side down: retried with backoff.\n"
            "\n"
            "Credentials: --credential is a client certificate of role `federation` for --to (one PEM\n"
            "file with its key; `suara pki issue NAME --role federation --election ID` from the\n"
            "receiver's CA); --reader-credential one of role `reader` for --from (default: publish's,\n"
            "SUARA_PUBLISH_CREDENTIAL). The contests are those of this instance's registry."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--to",
        required=True,
        metavar="HOST:PORT",
        help="the receiving aggregate's internal address; several comma-separated for its every instance",
    )
    p.add_argument(
        "--area", action="append", required=True, metavar="CODE", help="an area this instance feeds (repeatable)"
    )
    p.add_argument("--name", help="this sender's name at the receiver (default: forward-<areas>)")
    p.add_argument(
        "--from",
        dest="source",
        metavar="HOST:PORT",
        help="this instance's internal address, or its every instance's comma-separated "
        "(default: SUARA_AGGREGATE_ADDRESS)",
    )
    p.add_argument(
        "--credential",
        type=Path,
        required=True,
        help="the federation credential for --to (with SUARA_INSECURE: a writer's `suara service issue` file)",
    )
    p.add_argument("--reader-credential", type=Path, help="reader credential for --from")
    p.add_argument("--contest", action="append", help="only these contests (default: every one of the registry)")
    p.set_defaults(handler=run_forward)


async def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    from services.aggregate.server import serve

    return await serve_section(args, settings, "aggregate", serve)


async def run_forward(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio
    import signal

    import grpc

    from cli.embedded import service_database_url
    from services.aggregate.forward import Forwarder
    from services.publish.server import credential_path
    from suara.client.aggregate_stub import aggregate_stub
    from suara.registry.catalog import fetch_contests
    from suara.runtime.auth.certificate import load_credential
    from suara.runtime.auth.client import caller_channel
    from suara.runtime.database import connect

    try:
        sender = load_credential(args.credential)
        reader = load_credential(args.reader_credential or credential_path(settings))
    except (OSError, ValueError) as exc:
        print(f"cannot load a credential: {exc}", file=sys.stderr)
        return 2
    with service_database_url(settings, "aggregate") as url:
        async with connect(url) as conn:
            known = await fetch_contests(conn)
    contests = args.contest or sorted(known)
    unknown = sorted(set(contests) - set(known))
    if unknown:
        print(
            f"--contest {', '.join(unknown)}: not in this instance's registry ({', '.join(sorted(known))})",
            file=sys.stderr,
        )
        return 2
    name = args.name or "forward-" + "-".join(sorted(args.area))
    source = caller_channel(args.source or settings.peers.aggregate, settings, reader)
    target = caller_channel(args.to, settings, sender)
    forwarder = Forwarder(aggregate_stub(source), aggregate_stub(target), name=name, areas=args.area, contests=contests)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await forwarder.run(stop)
    except grpc.aio.AioRpcError as exc:
        print(f"suara aggregate forward: {exc.details()} (check --area and --contest)", file=sys.stderr)
        return 2
    finally:
        await source.close()
        await target.close()
    print(f"forwarded {forwarder.stats.sent:,} updates: {forwarder.stats.outcomes}", file=sys.stderr)
    return 0
