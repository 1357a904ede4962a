"""`suara service issue|revoke|relay`: service-to-service credentials, and tally's outbox relay on its own."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from cli.actor import operator
from cli.embedded import database_url, service_database_url
from suara.runtime.auth.credential import ROLES
from suara.runtime.auth.store import DEFAULT_TABLE
from suara.runtime.database import connect
from suara.runtime.settings import Settings

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def add_parser(sub: Any) -> None:
    service = sub.add_parser("service", help="credentials services use to call each other; the outbox relay")
    ssub = service.add_subparsers(dest="service_command", metavar="ACTION", required=True)

    p = ssub.add_parser(
        "issue",
        help="create a service credential, register its public key, write it to a file (mode 0600)",
        description=(
            "Create a service credential: an id, a role and an Ed25519 key pair. The public key is registered in\n"
            "the protected service's credential table; the private key goes to the file, and nowhere else.\n"
            "Callers sign each call: metadata `authorization: Suara-Service <id>:<unix s>:<hex signature>`.\n"
            "Only servers in plaintext mode (SUARA_INSECURE=1, debugging) take these tokens, which a network can\n"
            "capture and replay; under TLS a service is known by its client certificate (`suara pki issue --role`).\n\n"
            "roles (disjoint, least privilege):\n"
            "  writer  may call aggregate's Apply* (tally's relay, a federated aggregate)\n"
            "  reader  may call aggregate's GetArea, GetAreas, Changes, GetReconciliation (publish)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--name", required=True, help="who holds it, e.g. tally-relay or publish")
    p.add_argument("--role", required=True, choices=ROLES, help="what it may call")
    p.add_argument("--out", type=Path, help="where to write it (default: SUARA_DATA_DIR/<name>.key.json)")
    p.add_argument("--table", default=DEFAULT_TABLE, help=f"the credential table (default: {DEFAULT_TABLE})")
    p.add_argument("--force", action="store_true", help="write over an existing file (its credential stays valid)")
    p.set_defaults(handler=run_issue)

    r = ssub.add_parser(
        "revoke",
        help="revoke a service credential by id",
        description="Revoke a service credential. Every running aggregate refuses it within a second.",
    )
    r.add_argument("credential_id", help="the id, e.g. svc_0123456789ab")
    r.add_argument("--table", default=DEFAULT_TABLE, help=f"the credential table (default: {DEFAULT_TABLE})")
    r.set_defaults(handler=run_revoke)

    relay = ssub.add_parser(
        "relay",
        help="run tally's outbox relay on its own until SIGTERM/SIGINT",
        description=(
            "Deliver tally.outbox to aggregate (ApplyUpdates) in batches of SUARA_RELAY_BATCH, in arrival order,\n"
            "marking rows delivered only once aggregate confirms. Retries with backoff while either side is down.\n"
            "Several may run: one delivers (a database advisory lock), the others stand by and take over."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    relay.add_argument(
        "--aggregate",
        help="aggregate's HOST:PORT, or several comma-separated (every instance) (default: SUARA_AGGREGATE_ADDRESS)",
    )
    relay.add_argument(
        "--credential",
        type=Path,
        help="the writer's certificate and key in one PEM file, or with SUARA_INSECURE a token credential "
        "(default: SUARA_RELAY_CREDENTIAL)",
    )
    relay.add_argument("--batch", type=int, help="rows per call (default: SUARA_RELAY_BATCH)")
    relay.set_defaults(handler=run_relay)


async def run_issue(args: argparse.Namespace, settings: Settings) -> int:
    from services.aggregate.admin_log import record_admin_action
    from suara.runtime.auth.store import issue_service_credential

    if not _NAME.match(args.name):
        print(f"--name must be letters, digits, '.', '_' or '-', got {args.name!r}", file=sys.stderr)
        return 2
    out: Path = args.out or settings.data_dir / f"{args.name}.key.json"
    if out.exists() and not args.force:  # noqa: ASYNC240  (one stat before any I/O of consequence)
        print(f"{out} exists; use it, or pass --force to write a new credential over it", file=sys.stderr)
        return 2
    import asyncpg

    with database_url(settings) as url:
        async with connect(url) as conn:
            try:
                async with conn.transaction():
                    credential = await issue_service_credential(conn, args.name, args.role, args.table)
                    if args.table == DEFAULT_TABLE:  # aggregate's own: on its record
                        detail = {"name": args.name, "role": args.role}
                        await record_admin_action(conn, operator(), "service.issue", credential.id, detail)
            except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
                print(f"no table {args.table}: run `suara db migrate` first", file=sys.stderr)
                return 2
    credential.save(out)
    print(f"{credential.role} credential {credential.id} ({credential.name}) written to {out}")
    return 0


async def run_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from services.aggregate.admin_log import record_admin_action
    from suara.runtime.auth.store import revoke_service_credential

    with database_url(settings) as url:
        async with connect(url) as conn, conn.transaction():
            revoked = await revoke_service_credential(conn, args.credential_id, args.table)
            if revoked and args.table == DEFAULT_TABLE:
                await record_admin_action(conn, operator(), "service.revoke", args.credential_id)
    if not revoked:
        print(f"no live credential {args.credential_id}", file=sys.stderr)
        return 1
    print(f"revoked {args.credential_id}")
    return 0


async def run_relay(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio
    import signal
    from dataclasses import replace

    from services.tally.relay import Relay

    if args.aggregate:
        settings = replace(settings, peers=replace(settings.peers, aggregate=args.aggregate))
    if args.credential:
        settings = replace(settings, relay=replace(settings.relay, credential=str(args.credential)))
    if args.batch:
        settings = replace(settings, relay=replace(settings.relay, batch=args.batch))
    with service_database_url(settings, "tally") as url:
        try:
            relay = Relay.from_settings(settings, url)
        except (OSError, ValueError) as exc:
            print(f"cannot load the relay credential: {exc}; see `suara service issue --role writer`", file=sys.stderr)
            return 2
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        relay.start()
        try:
            await stop.wait()
        finally:
            await relay.stop()
    return 0
