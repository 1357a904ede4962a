"""`suara admin init`: the admin credential internal systems use (EnrollDevice)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cli.embedded import database_url
from suara.runtime.database import connect
from suara.runtime.settings import Settings


def add_parser(sub: Any) -> None:
    admin = sub.add_parser("admin", help="admin credentials for internal systems")
    asub = admin.add_subparsers(dest="admin_command", metavar="ACTION", required=True)
    p = asub.add_parser(
        "init",
        help="create an admin credential and write it to a file (mode 0600)",
        description=(
            "Create an admin credential. The file holds a bearer token; only its SHA-256 is stored in the\n"
            "database. Callers send it as gRPC metadata `authorization: Bearer <token>`."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, help="where to write it (default: SUARA_DATA_DIR/admin.key.json)")
    p.add_argument("--label", default="", help="a note on who holds it")
    p.add_argument("--force", action="store_true", help="replace an existing credential file (its token stays valid)")
    p.set_defaults(handler=run_init)


async def run_init(args: argparse.Namespace, settings: Settings) -> int:
    from services.tally.access import create_admin_credential

    out: Path = args.out or settings.data_dir / "admin.key.json"
    if out.exists() and not args.force:  # noqa: ASYNC240  (one stat before any I/O of consequence)
        print(f"{out} exists; use it, or pass --force to write a new credential over it", file=sys.stderr)
        return 2
    with database_url(settings) as url:
        async with connect(url) as conn:
            credential = await create_admin_credential(conn, args.label)
    credential.save(out)
    print(f"admin credential {credential.id} written to {out}")
    return 0
