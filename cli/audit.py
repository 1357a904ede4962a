"""`suara audit verify` and `suara audit site`: check tally's tamper-evident chain, from the database and
against the heads a site published, and the published heads from the site alone."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
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
    p.add_argument(
        "--against",
        metavar="SITE",
        help=(
            "also check that the chain still reaches every head SITE published (a site directory, its http(s) "
            "URL, or a saved suara/snapshot.json with --keys): fails on records deleted or rewritten since"
        ),
    )
    p.add_argument(
        "--keys",
        metavar="FILE",
        help="with --against FILE: the saved suara/kunci-rantai.json whose keys must have signed its head",
    )
    _trust_argument(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=run_verify)

    s = asub.add_parser(
        "site",
        help="check the chain heads a published site carries, from its files alone",
        description=(
            "Read SITE's pointer (suara/snapshot.json), every history entry (suara/riwayat/) and the chain keys\n"
            "(suara/kunci-rantai.json); exit 1 unless every head is validly signed by a published key and heads\n"
            "only grow along the snapshots (position never lower, one hash per position)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("site", metavar="SITE", help="a site directory, or the site's http(s):// URL")
    _trust_argument(s)
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(handler=run_site)


def _trust_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--key-id",
        action="append",
        default=[],
        metavar="ID",
        help="a chain key id known from elsewhere (tally logs it; repeat for several): heads signed by others fail",
    )


def _published_heads(args: argparse.Namespace) -> tuple[dict[tuple[int, int], bytes], list[str]]:
    """(chain, position) → hash of every validly signed head of --against, and what is wrong with the rest."""
    from suara.site.audit import SiteUnreadable, audit_site, site_reader

    source: str = args.against
    trusted = frozenset(args.key_id)
    try:
        if Path(source).is_file():
            if not args.keys:
                return {}, [f"--against {source}: a head from a file needs --keys (a saved suara/kunci-rantai.json)"]
            saved = json.loads(Path(source).read_bytes())
            keys = json.loads(Path(args.keys).read_bytes())
            files = {"suara/snapshot.json": {**saved, "contests": {}}, "suara/kunci-rantai.json": keys}
            report = audit_site(files.get, trusted)
        else:
            report = audit_site(site_reader(source), trusted)
    except (SiteUnreadable, OSError, ValueError) as exc:
        return {}, [f"--against {source}: {exc}"]
    heads = {(h.head.chain, h.head.position): h.head.hash for h in report.heads}
    return heads, [f"published: {p}" for p in report.problems]


async def run_verify(args: argparse.Namespace, settings: Settings) -> int:
    from services.tally.audit import verify_chain
    from suara.runtime.objects import photo_store

    published, site_problems = _published_heads(args) if args.against else ({}, [])
    progress = Progress("verifying chain")
    photos = photo_store(settings)
    try:
        with database_url(settings) as url:
            async with connect(url) as conn:
                report = await verify_chain(
                    conn,
                    check_signatures=not args.no_signatures,
                    progress=progress.update,
                    published=published,
                    photos=photos,
                )
    finally:
        await photos.close()
    progress.done()
    report.problems[:0] = site_problems
    newest: dict[int, int] = {}
    for chain, position in published:
        newest[chain] = max(position, newest.get(chain, 0))
    if len(newest) > 1:
        reached = f", reaches the newest published head of each of {len(newest)} chains"
    else:
        reached = f", reaches the newest published head (position {max(newest.values()):,})" if newest else ""
    if args.json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "records": report.records,
                    "head_hash": report.head_hash,
                    "published_heads": len(published),
                    "chains": report.chains,
                    "heads": {str(c): {"position": p, "hash": h} for c, (p, h) in sorted(report.heads.items())},
                    "problems": report.problems,
                }
            )
        )
    elif report.ok:
        if report.chains == 1:
            print(f"chain OK: {report.records:,} records, head {report.head_hash}{reached}")
        else:
            print(f"chains OK: {report.records:,} records in {report.chains} chains{reached}")
            for chain, (position, head_hash) in sorted(report.heads.items()):
                print(f"  chain {chain}: {position:,} records, head {head_hash}")
    else:
        print(f"chain BROKEN: {len(report.problems)} problem(s) in {report.records:,} records")
        for problem in report.problems:
            print("  - " + problem)
    return 0 if report.ok else 1


async def run_site(args: argparse.Namespace, settings: Settings) -> int:
    from suara.site.audit import SiteUnreadable, audit_site, site_reader

    try:
        report = audit_site(site_reader(args.site), frozenset(args.key_id))
    except SiteUnreadable as exc:
        print(f"cannot read the site: {exc}", file=sys.stderr)
        return 1
    newest = report.newest
    if args.json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "heads": len(report.heads),
                    "chains": report.chains,
                    "unsigned": report.unsigned,
                    "keys": sorted(report.keys),
                    "newest": None
                    if newest is None
                    else {"where": newest.where, "position": newest.head.position, "hash": newest.head.hash.hex()},
                    "problems": report.problems,
                }
            )
        )
    elif report.ok:
        where = "" if newest is None else f"; newest at position {newest.head.position:,}, {newest.head.hash.hex()}"
        print(f"site OK: {len(report.heads):,} signed heads, growing, keys {', '.join(sorted(report.keys))}{where}")
    else:
        print(f"site BROKEN: {len(report.problems)} problem(s) in {len(report.heads):,} signed heads")
        for problem in report.problems:
            print("  - " + problem)
    return 0 if report.ok else 1
