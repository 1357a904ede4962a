"""`suara rehearsal …`: a rehearsal (gladi, simulasi) is run like the real night, then erased whole."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from cli.components import MIGRATION_DIRS
from cli.embedded import database_url
from services.publish.rehearsal import carries_marker
from services.tally.queries import QUERIES as TALLY_QUERIES
from suara.registry.catalog import fetch_election
from suara.registry.summary import is_migrated
from suara.runtime.database import connect
from suara.runtime.migrations import unmigrate
from suara.runtime.objects import LocalObjectStore, photo_store
from suara.runtime.settings import Settings

_PAGES = (".json", ".html")  # the files that carry the SIMULASI marker


def add_parser(sub: Any) -> None:
    group = sub.add_parser("rehearsal", help="rehearsals (gladi): erase one whole, database and published site")
    groupsub = group.add_subparsers(dest="rehearsal_command", metavar="ACTION", required=True)
    p = groupsub.add_parser(
        "wipe",
        help="erase a rehearsal: every row of its database, its published site and its photos",
        description=(
            "Erase a rehearsal completely, so that nothing of it can be mistaken for the real election:\n"
            "  1. its published site (SUARA_SITE_DIR): every file, once every page and JSON file in it is\n"
            "     checked to carry the SIMULASI marker of this election;\n"
            "  2. its form photos in the photo store (SUARA_PHOTO_STORE, a directory);\n"
            "  3. its database (DATABASE_URL, or the embedded server of SUARA_DATA_DIR): the registry, tally,\n"
            "     aggregate and publish schemas with every row, in one transaction. The database is then as\n"
            "     before `suara db migrate`; `suara db migrate` and `suara registry load --rehearsal` start\n"
            "     the next rehearsal.\n"
            "It refuses a database whose election is not a rehearsal (`suara registry load --rehearsal`\n"
            "marks one; a real election's database can never be marked), an --election-id that is not the\n"
            "database's, and a site with a file that does not carry the marker. Stop the rehearsal's\n"
            "services first. Without --yes it only says what it would erase. A wipe cut short may be run\n"
            "again: the database, which says it is a rehearsal, goes last."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--election-id",
        required=True,
        metavar="ID",
        help="the rehearsal's election id, as `suara registry show` prints it: the wipe refuses any other",
    )
    p.add_argument("--yes", action="store_true", help="erase for real (without it: say what would be erased)")
    p.set_defaults(handler=run_wipe)


def site_files(site: Path) -> list[Path]:
    """Every file under `site` (none when it does not exist)."""
    return sorted(p for p in site.rglob("*") if p.is_file() or p.is_symlink()) if site.is_dir() else []


def unmarked(site: Path, files: list[Path], election_id: str) -> list[str]:
    """The pages and JSON files of `site` that do not carry election `election_id`'s SIMULASI marker."""
    wrong = []
    for path in files:
        rel = path.relative_to(site).as_posix()
        if rel.endswith(_PAGES):
            try:
                if carries_marker(path.read_bytes(), rel, election_id):
                    continue
            except ValueError:  # not JSON: not a file publish wrote for this rehearsal
                pass
            wrong.append(rel)
    return wrong


def erase(site: Path, files: list[Path], photos: list[Path]) -> int:
    """Remove the site's files and directories (the site directory itself stays, empty) and the photos; how
    many photos were there."""
    for path in files:
        path.unlink(missing_ok=True)
    for directory in sorted((d for d in site.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
        directory.rmdir()
    removed = 0
    for photo in photos:
        if photo.exists():
            photo.unlink()
            removed += 1
    return removed


async def run_wipe(args: argparse.Namespace, settings: Settings) -> int:
    target = settings.publish.to or str(settings.site.dir)
    if "://" in target:
        print(f"the site is at {target}: wipe removes a site directory only; remove that prefix with the "
              "bucket's own tools, then run wipe without SUARA_PUBLISH_TO", file=sys.stderr)  # fmt: skip
        return 2
    site = Path(target)
    store = photo_store(settings)
    if not isinstance(store, LocalObjectStore):
        await store.close()
        print(f"the photo store is {store.describe()}: wipe removes photos from a directory store only",
              file=sys.stderr)  # fmt: skip
        return 2
    with database_url(settings) as url:
        async with connect(url) as conn:
            if not await is_migrated(conn):
                print("this database holds no election (nothing to wipe): `suara registry show` says why",
                      file=sys.stderr)  # fmt: skip
                return 2
            election, rehearsal = await fetch_election(conn)
            if not rehearsal:
                print(f"refusing: election {election or '(unnamed)'!r} of this database is a real election, not a "
                      "rehearsal; wipe erases only a database loaded with `suara registry load --rehearsal`",
                      file=sys.stderr)  # fmt: skip
                return 2
            if election != args.election_id:
                print(f"refusing: this database holds rehearsal {election!r}, not {args.election_id!r}",
                      file=sys.stderr)  # fmt: skip
                return 2
            files = site_files(site)
            wrong = unmarked(site, files, election)
            if wrong:
                print(f"refusing: {len(wrong)} file(s) of {site} do not carry the SIMULASI marker of {election!r}, "
                      f"so this may not be its site: {', '.join(wrong[:5])}", file=sys.stderr)  # fmt: skip
                return 2
            if files and not any(p.name.endswith(_PAGES) for p in files):
                print(f"refusing: {site} holds files but no page or JSON file of a rehearsal", file=sys.stderr)
                return 2
            photos = [r["sha256"] for r in await conn.fetch(TALLY_QUERIES.stored_photos)]
            if not args.yes:
                print(f"would erase rehearsal {election!r}: {len(files):,} files of {site}, {len(photos):,} photos "
                      f"of {store.describe()}, and its database (every row); add --yes to erase")  # fmt: skip
                await store.close()
                return 1
            removed = await asyncio.to_thread(erase, site, files, [store.path(sha) for sha in photos])
            await store.close()
            await unmigrate(conn, [component for component, _ in MIGRATION_DIRS])
    print(f"wiped rehearsal {election!r}: {len(files):,} site files, {removed:,} photos, and its database")
    return 0
