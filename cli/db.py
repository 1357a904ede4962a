"""`suara db …`: the database itself (migrations, the embedded server)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cli.backup import BackupError, archive, backup, restore_embedded, restore_files
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
    p = dbsub.add_parser(
        "backup",
        help="back the whole database server up into a new directory (pg_basebackup), and verify it",
        description="Back up the server DATABASE_URL names, or the embedded one (started for the duration if it "
        "is not running), while suara keeps running: `pg_basebackup --format=tar --wal-method=stream` writes "
        "DIR/base.tar.gz, DIR/pg_wal.tar.gz (the WAL written meanwhile: the backup is consistent as of its end, "
        "every form acknowledged before then is in it) and DIR/backup_manifest (each file's SHA-256); "
        "`pg_verifybackup` then checks it. Progress goes to stderr; the last line on stdout names the backup. "
        "It needs a replication connection: the embedded server allows one for suara_owner; a server of your "
        "own needs a role with REPLICATION (or a superuser), a `replication` line in pg_hba.conf, "
        "wal_level = replica and max_wal_senders >= 2 (3 while `suara db archive` runs). Keys and certificates "
        "(DATA_DIR/*.pem, *.key.json, chain.key.json, pki/) are not in the database: back them up apart. "
        "What is committed after the backup's end is in it only with `suara db archive`.",
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="where the backup goes: a new or empty directory")
    p.set_defaults(handler=run_backup)
    p = dbsub.add_parser(
        "restore",
        help="restore a backup into a fresh data directory, checked against its manifest",
        description="Unpack a backup made by `suara db backup` into a new data directory, check every file "
        "(and the WAL it needs) against its manifest with pg_verifybackup, and make it ready to start. By "
        "default into DATA_DIR/pgdata (--data-dir, or SUARA_DATA_DIR) for the embedded server: it is started "
        "once, replaying the WAL to the end of the backup (or of --wal-archive, or to --target-time) and setting "
        "new passwords for every role (in "
        "DATA_DIR/pgdata.pass/), and stopped; then run `suara up --data-dir DATA_DIR`. With --pgdata, into a "
        "bare PostgreSQL data directory for a server of your own (same major version as the source): its roles "
        "keep their passwords; start it with `pg_ctl -D DIR start` as the server's user. The directory must "
        "not exist or be empty: a restore never overwrites.",
    )
    p.add_argument("backup", type=Path, metavar="BACKUP", help="a directory written by `suara db backup`")
    p.add_argument(
        "--wal-archive",
        type=Path,
        metavar="DIR",
        help="the directory `suara db archive` streamed the WAL into: replayed after the backup, to its end "
        "or to the time given, so what was committed after the backup comes back too",
    )
    p.add_argument(
        "--target-time",
        metavar="TIME",
        help="with --wal-archive: stop at this time, e.g. '2024-02-14 21:30:00+07' (point in time; "
        "after the backup's end)",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--data-dir", type=Path, help="suara's data directory to restore into (default: SUARA_DATA_DIR)")
    where.add_argument("--pgdata", type=Path, help="a bare PostgreSQL data directory to restore into instead")
    p.set_defaults(handler=run_restore)
    p = dbsub.add_parser(
        "archive",
        help="stream the database's WAL into a directory until stopped (pg_receivewal), for restores after a backup",
        description="Stream the WAL of DATABASE_URL's server, or of the running embedded one, into DIR as it is "
        "written, each record flushed to disk at once (pg_receivewal --synchronous), until SIGINT or SIGTERM. "
        "A restore given DIR (`suara db restore BACKUP --wal-archive=DIR`) then replays it after the backup: "
        "what was committed after "
        "the backup comes back too. Run it beside `suara up`, its directory on another disk or host. It uses "
        "the replication slot suara_archive, so the server keeps the WAL the archive has not received yet, "
        "while it is stopped too: an archive given up for good must drop its slot "
        "(SELECT pg_drop_replication_slot('suara_archive')) or the server's disk fills.",
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="where the WAL goes (created if missing)")
    p.set_defaults(handler=run_archive)


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


def run_backup(args: argparse.Namespace, settings: Settings) -> int:
    try:
        with database_url(settings) as url:
            size = backup(url, args.dir.resolve())
    except BackupError as error:
        print(f"suara db backup: {error}", file=sys.stderr)
        return 1
    print(f"backup: {args.dir.resolve()} ({size / 1e6:.1f} MB, verified)")
    return 0


def run_archive(args: argparse.Namespace, settings: Settings) -> int:
    url = settings.database.url
    if not url:
        server = embedded_server(settings)
        if not server.is_running():
            print(
                f"suara db archive: the embedded server in {server.pgdata} is not running: start suara "
                "(`suara up`, or `suara db start`) first",
                file=sys.stderr,
            )
            return 1
        url = server.url(role=OWNER_ROLE)
    try:
        archive(url, args.dir.resolve())  # returns only when it failed to start
    except BackupError as error:
        print(f"suara db archive: {error}", file=sys.stderr)
    return 1


def run_restore(args: argparse.Namespace, settings: Settings) -> int:
    source = args.backup.resolve()
    archived = args.wal_archive.resolve() if args.wal_archive else None
    try:
        if args.pgdata is not None:
            restore_files(source, args.pgdata.resolve(), archived, args.target_time)
            print(f"restored: {args.pgdata.resolve()}; start it with that PostgreSQL's `pg_ctl -D DIR start`")
        else:
            data_dir = (args.data_dir or settings.data_dir).resolve()
            restore_embedded(source, data_dir, archived, args.target_time)
            print(f"restored: {data_dir}/pgdata; start suara on it with `suara up --data-dir {data_dir}`")
    except BackupError as error:
        print(f"suara db restore: {error}", file=sys.stderr)
        return 1
    return 0
