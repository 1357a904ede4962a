"""`suara admin init|revoke`: the admin credentials internal systems use (EnrollDevice)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cli.actor import operator
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

    r = asub.add_parser(
        "revoke",
        help="revoke an admin credential: every running tally refuses it within a second",
        description=(
            "Revoke an admin credential (a leaked token, a system retired). Every running tally refuses it within\n"
            "a second. Recorded in tally.admin_log with who and when."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument("credential_id", nargs="?", help="the credential's id, e.g. adm_0123456789ab")
    which.add_argument("--key", type=Path, metavar="FILE", help="the credential file (its id is read from it)")
    r.add_argument("--reason", default="", help="why, for the record")
    r.set_defaults(handler=run_revoke)


async def run_init(args: argparse.Namespace, settings: Settings) -> int:
    from services.tally.access import create_admin_credential

    out: Path = args.out or settings.data_dir / "admin.key.json"
    if out.exists() and not args.force:  # noqa: ASYNC240  (one stat before any I/O of consequence)
        print(f"{out} exists; use it, or pass --force to write a new credential over it", file=sys.stderr)
        return 2
    with database_url(settings) as url:
        async with connect(url) as conn:
            credential = await create_admin_credential(conn, args.label, actor=operator())
    credential.save(out)
    print(f"admin credential {credential.id} written to {out}")
    return 0


async def run_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from services.tally.access import revoke_admin_credential
    from suara.runtime.auth.admin import AdminCredential

    credential_id: str = args.credential_id
    if args.key is not None:
        try:
            credential_id = AdminCredential.load(args.key).id
        except (OSError, ValueError, KeyError) as exc:
            print(f"cannot read the admin credential file {args.key}: {exc}", file=sys.stderr)
            return 2
    with database_url(settings) as url:
        async with connect(url) as conn:
            revoked = await revoke_admin_credential(conn, credential_id, operator(), args.reason)
    if not revoked:
        print(f"no live admin credential {credential_id}; nothing revoked", file=sys.stderr)
        return 1
    print(f"admin credential {credential_id} revoked; running tally processes refuse it within a second")
    return 0
