"""`suara audit verify`: check tally's tamper-evident chain from the database alone."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cli.embedded import database_url
from cli.progress import Progress
from suara.runtime.database import connect
from suara.runtime.settings import Settings


def add_parser(sub: Any) -> None:
    audit = sub.add_parser("audit", help="verify what tally stored")
    asub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    p = asub.add_parser(
        "verify",
        help="recompute the whole submission chain and every signature",
        description=(
            "Recompute every link of the submission chain from the genesis, every payload hash and\n"
            "(unless --no-signatures) every device signature; exit 1 if anything does not match."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--no-signatures", action="store_true", help="skip signature checks (faster)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=run_verify)


async def run_verify(args: argparse.Namespace, settings: Settings) -> int:
    from services.tally.audit import verify_chain

    progress = Progress("verifying chain")
    with database_url(settings) as url:
        async with connect(url) as conn:
            report = await verify_chain(conn, check_signatures=not args.no_signatures, progress=progress.update)
    progress.done()
    if args.json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "records": report.records,
                    "head_hash": report.head_hash,
                    "problems": report.problems,
                }
            )
        )
    elif report.ok:
        print(f"chain OK: {report.records:,} records, head {report.head_hash}")
    else:
        print(f"chain BROKEN: {len(report.problems)} problem(s) in {report.records:,} records")
        for problem in report.problems:
            print("  - " + problem)
    return 0 if report.ok else 1
