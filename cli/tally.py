"""`suara tally serve`: run the tally gRPC service; `suara tally dead-letters`: what the relay set aside."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from cli.embedded import database_url
from cli.serving import add_bind_arguments, serve_section
from suara.runtime.database import connect
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

    p = tsub.add_parser(
        "dead-letters",
        help="list the outbox rows the relay set aside, or hand them back to it (redeliver)",
        description=(
            "The relay sets aside an outbox row aggregate refuses (its numbers fit no form), one it\n"
            "cannot send, or one that fails alone again and again, so that every other form still\n"
            "reaches the totals; each raises an alarm and a `relay_dead_letter` error log event.\n"
            "Without an action: list those still set aside (one JSON object a line; --all also the\n"
            "redelivered). After repairing the cause (docs/runbook.md), `redeliver` hands them back."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--all", action="store_true", help="also list those already redelivered")
    dl = p.add_subparsers(dest="dead_letters_command", metavar="ACTION")
    r = dl.add_parser(
        "redeliver",
        help="hand dead letters back to the relay, which sends them again",
        description="Hand dead letters back to the relay: the outbox ids given, or (--every) all still set aside.",
    )
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", type=int, action="append", dest="ids", metavar="OUTBOX_ID", help="an outbox id (again)")
    which.add_argument("--every", action="store_true", help="every dead letter still set aside")
    p.set_defaults(handler=run_dead_letters)


async def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    from services.tally.server import serve

    return await serve_section(args, settings, "tally", serve)


async def run_dead_letters(args: argparse.Namespace, settings: Settings) -> int:
    from services.tally.dead_letters import dead_letters, redeliver

    with database_url(settings) as url:
        async with connect(url) as conn:
            if getattr(args, "dead_letters_command", None) == "redeliver":
                ids = await redeliver(conn, None if args.every else list(args.ids))
                print(f"{len(ids)} handed back to the relay: {' '.join(map(str, ids)) or '(none)'}")
                return 0
            for d in await dead_letters(conn, include_redelivered=args.all):
                entry = dataclasses.asdict(d) | {"fields": list(d.fields)}
                print(json.dumps(entry, default=lambda t: t.isoformat()))
    return 0
