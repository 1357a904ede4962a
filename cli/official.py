"""`suara official enroll|revoke`: a recap official's signing key (rekapitulasi berjenjang)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cli.actor import operator
from cli.embedded import database_url
from cli.keyfiles import write_key_file
from suara.runtime.database import connect
from suara.runtime.settings import Settings


def add_parser(sub: Any) -> None:
    from suara.election.signing import OFFICIAL_ROLES

    official = sub.add_parser("official", help="recap officials (PPK, KPU kabupaten/kota and province)")
    osub = official.add_subparsers(dest="official_command", metavar="ACTION", required=True)
    roles = ", ".join(f"{r} ({n}-digit area)" for r, n in OFFICIAL_ROLES.items())
    p = osub.add_parser(
        "enroll",
        help="create an official's Ed25519 key for one area and register it with aggregate",
        description=(
            "Create an Ed25519 key for a recap official, bound to one area and role, register its public key\n"
            "with aggregate, and write the private key to a file the official keeps (mode 0600, never\n"
            "overwritten). The official signs the D.Hasil recap totals of that area with it (SubmitRecap).\n"
            f"Roles: {roles}."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--area", required=True, help="the kecamatan, kabupaten/kota or province code")
    p.add_argument("--role", required=True, choices=sorted(OFFICIAL_ROLES), help="which recap the official makes")
    p.add_argument(
        "--out",
        type=Path,
        help="key file to write (default: named after the area and the official id, in the current directory)",
    )
    p.add_argument("--label", default="", help="a note, e.g. the official's name and office")
    p.set_defaults(handler=run_enroll)

    r = osub.add_parser(
        "revoke",
        help="revoke an official's key: aggregate refuses the recaps it signs from then on",
        description=(
            "Revoke a recap official's key (a lost key, an official replaced). aggregate refuses every recap it\n"
            "signs from the moment this returns; recaps it signed before stay. Recorded in aggregate.admin_log\n"
            "with who and when. A successor gets a key of their own with `suara official enroll`."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument("--key", type=Path, metavar="KEYFILE", help="the official's key file")
    which.add_argument("--official-id", help="the official's id (off_…)")
    r.add_argument("--reason", default="", help="why, for the record")
    r.set_defaults(handler=run_revoke)


async def run_enroll(args: argparse.Namespace, settings: Settings) -> int:
    from services.aggregate.officials import enroll_official
    from suara.election.signing import OfficialKey
    from suara.registry.catalog import fetch_election_id
    from suara.registry.summary import area_exists

    try:
        OfficialKey.generate(args.area, args.role)  # the role and area fit: checked before the database
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    written: Path | None = None
    try:
        with database_url(settings) as url:
            async with connect(url) as conn:
                if not await area_exists(conn, args.area):
                    print(f"unknown area {args.area!r}: not in the registry", file=sys.stderr)
                    return 2
                # The key file names the election: the official signs it into every recap.
                key = OfficialKey.generate(args.area, args.role, await fetch_election_id(conn))
                out: Path = args.out or Path(f"{args.area}-{key.official_id}.key.json")
                if not write_key_file(key, out):
                    return 2
                written = out
                await enroll_official(conn, key, args.label, actor=operator())
    except BaseException:
        if written is not None:
            written.unlink(missing_ok=True)
        raise
    print(f"official {key.official_id} ({key.role}) enrolled for area {key.area}; private key written to {out}")
    return 0


async def run_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from services.aggregate.officials import revoke_official
    from suara.election.signing import OfficialKey

    official_id: str = args.official_id
    if args.key is not None:
        try:
            official_id = OfficialKey.load(args.key).official_id
        except (OSError, ValueError, KeyError) as exc:
            print(f"cannot read the official's key file {args.key}: {exc}", file=sys.stderr)
            return 2
    with database_url(settings) as url:
        async with connect(url) as conn:
            revoked = await revoke_official(conn, official_id, operator(), args.reason)
    if revoked is None:
        print(f"no live official {official_id}; nothing revoked", file=sys.stderr)
        return 1
    print(f"official {official_id} ({revoked}) revoked; aggregate refuses the recaps it signs from now on")
    return 0
