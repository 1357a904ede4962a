"""`suara db …`: the database itself (migrations, the embedded server)."""

from __future__ import annotations

import argparse
from typing import Any

from cli.components import MIGRATION_DIRS
from cli.embedded import OWNER_ROLE, database_url, embedded_server
from suara.runtime.database import connect
from suara.runtime.migrations import discover, migrate
from suara.runtime.settings import Settings


def add_parser(sub: Any) -> None:
    db = sub.add_parser("db", help="database: migrate, start/stop the embedded server")
    dbsub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    p = dbsub.add_parser(
        "migrate",
        help="apply pending schema migrations (safe to run twice, or by two processes at once)",
        description="Apply every pending .sql migration of every component, each in its own schema.",
    )
    p.set_defaults(handler=run_migrate)
    p = dbsub.add_parser(
        "start",
        help="start the embedded PostgreSQL (no-op with DATABASE_URL) and print its URL",
        description="Start the embedded PostgreSQL in SUARA_DATA_DIR/pgdata (initializing it the first time) and "
        "print its URL. It keeps running until `suara db stop`. With DATABASE_URL set, print that instead.",
    )
    p.set_defaults(handler=run_start)
    p = dbsub.add_parser(
        "stop",
        help="stop the embedded PostgreSQL",
        description="Stop the embedded PostgreSQL in SUARA_DATA_DIR/pgdata (a fast shutdown: sessions are "
        "rolled back, committed data is kept). Does nothing with DATABASE_URL set.",
    )
    p.set_defaults(handler=run_stop)
    p = dbsub.add_parser(
        "url",
        help="print the database URL suara would use",
        description="Print DATABASE_URL, or the embedded server's URL when it is running.",
    )
    p.set_defaults(handler=run_url)


async def migrate_url(url: str) -> list[str]:
    async with connect(url) as conn:
        applied = await migrate(conn, discover(MIGRATION_DIRS))
    return [f"{m.component}/{m.name}" for m in applied]


async def run_migrate(args: argparse.Namespace, settings: Settings) -> int:
    with database_url(settings) as url:
        applied = await migrate_url(url)
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else "; already up to date"))
    return 0


def run_start(args: argparse.Namespace, settings: Settings) -> int:
    if settings.database.url:
        print(settings.database.url)
        return 0
    server = embedded_server(settings)
    server.start()
    print(server.url(role=OWNER_ROLE))
    return 0


def run_stop(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.database.url:
        embedded_server(settings).stop()
    return 0


def run_url(args: argparse.Namespace, settings: Settings) -> int:
    if settings.database.url:
        print(settings.database.url)
    else:
        server = embedded_server(settings)
        print(
            server.url(role=OWNER_ROLE)
            if server.is_running()
            else f"(embedded server in {server.pgdata} is not running)"
        )
    return 0
