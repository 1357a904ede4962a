"""`suara rehearsal …`: a rehearsal (gladi, simulasi) is run like the real night, then erased whole."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
from suara.runtime.objects import LocalObjectStore, ObjectStore, S3ObjectStore, parse_s3_url, photo_store, s3_client
from suara.runtime.settings import SettingError, Settings

_PAGES = (".json", ".html")  # the files that carry the SIMULASI marker


def add_parser(sub: Any) -> None:
    group = sub.add_parser("rehearsal", help="rehearsals (gladi): erase one whole, database and published site")
    groupsub = group.add_subparsers(dest="rehearsal_command", metavar="ACTION", required=True)
    p = groupsub.add_parser(
        "wipe",
        help="erase a rehearsal: every row of its database, its published site and its photos",
        description=(
            "Erase a rehearsal completely, so that nothing of it can be mistaken for the real election:\n"
            "  1. its published site (SUARA_SITE_DIR, or the bucket and prefix of SUARA_PUBLISH_TO=s3://…):\n"
            "     every file, once every page and JSON file in it is checked to carry the SIMULASI marker\n"
            "     of this election;\n"
            "  2. its form photos, those its database records, in the photo store (SUARA_PHOTO_STORE: a\n"
            "     directory or s3://bucket/prefix);\n"
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


S3_DELETE_BATCH = 1000  # DeleteObjects takes at most this many keys
S3_THREADS = 16


class LocalSite:
    """A site directory: its files, read and removed (the directory itself stays, empty)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return str(self.root)

    def paths(self) -> list[str]:
        """Every file's path relative to the site (none when it does not exist)."""
        if not self.root.is_dir():
            return []
        found = (p for p in self.root.rglob("*") if p.is_file() or p.is_symlink())
        return sorted(p.relative_to(self.root).as_posix() for p in found)

    def read_many(self, paths: list[str]) -> Iterator[tuple[str, bytes]]:
        for path in paths:
            yield path, (self.root / path).read_bytes()

    def erase(self, paths: list[str]) -> None:
        for path in paths:
            (self.root / path).unlink(missing_ok=True)
        for directory in sorted((d for d in self.root.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
            directory.rmdir()


class S3Site:
    """A site in a bucket, under a prefix (the whole bucket without one): its objects, read and deleted.

    Only keys under `prefix/` are listed: a sibling prefix (the real election's `pemilu` beside a
    rehearsal's `pemilu-gladi`) is never touched."""

    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self._client: Any = s3_client(endpoint_url, connections=S3_THREADS)

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        return f"{where} via {self.endpoint_url}" if self.endpoint_url else where

    def _key(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    def paths(self) -> list[str]:
        start = f"{self.prefix}/" if self.prefix else ""
        keys: list[str] = []
        for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
            keys += [obj["Key"][len(start) :] for obj in page.get("Contents", [])]
        return sorted(keys)

    def _get(self, path: str) -> tuple[str, bytes]:
        body: bytes = self._client.get_object(Bucket=self.bucket, Key=self._key(path))["Body"].read()
        return path, body

    def read_many(self, paths: list[str]) -> Iterator[tuple[str, bytes]]:
        with ThreadPoolExecutor(S3_THREADS) as pool:
            yield from pool.map(self._get, paths)

    def erase(self, paths: list[str]) -> None:
        delete_keys(self._client, self.bucket, [self._key(path) for path in paths])

    def close(self) -> None:
        self._client.close()


def delete_keys(client: Any, bucket: str, keys: list[str]) -> None:
    """Delete `keys` of `bucket` (a missing one is no error, as S3 has it); raises on any key not deleted."""
    for i in range(0, len(keys), S3_DELETE_BATCH):
        batch = keys[i : i + S3_DELETE_BATCH]
        reply = client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
        errors = reply.get("Errors", [])
        if errors:
            first = errors[0]
            raise OSError(f"s3://{bucket}: {len(errors)} object(s) not deleted, first {first.get('Key')!r}: "
                          f"{first.get('Code')} {first.get('Message')}")  # fmt: skip


def open_site(settings: Settings) -> LocalSite | S3Site:
    """The rehearsal's site: SUARA_PUBLISH_TO's bucket and prefix, or the site directory."""
    target = settings.publish.to or str(settings.site.dir)
    parsed = parse_s3_url(target)
    if target.startswith("s3://"):
        if parsed is None:
            raise SettingError("SUARA_PUBLISH_TO", target, "s3://bucket/prefix with a valid bucket name")
        return S3Site(parsed[0], parsed[1], settings.publish.s3_endpoint_url or None)
    return LocalSite(Path(target))


def unmarked(site: LocalSite | S3Site, files: list[str], election_id: str) -> list[str]:
    """The pages and JSON files of `site` that do not carry election `election_id`'s SIMULASI marker."""
    wrong = []
    for rel, body in site.read_many([f for f in files if f.endswith(_PAGES)]):
        try:
            if carries_marker(body, rel, election_id):
                continue
        except ValueError:  # not JSON: not a file publish wrote for this rehearsal
            pass
        wrong.append(rel)
    return wrong


def erase_photos(store: ObjectStore, photos: list[str]) -> int:
    """Remove these photos (by SHA-256) from the photo store; how many were there (a bucket: how many asked)."""
    if isinstance(store, LocalObjectStore):
        removed = 0
        for path in (store.path(sha) for sha in photos):
            if path.exists():
                path.unlink()
                removed += 1
        return removed
    assert isinstance(store, S3ObjectStore)
    client = s3_client(store.endpoint_url)
    try:
        delete_keys(client, store.bucket, [store.object_key(sha) for sha in photos])
    finally:
        client.close()
    return len(photos)


async def run_wipe(args: argparse.Namespace, settings: Settings) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    site = open_site(settings)
    store = photo_store(settings)
    try:
        return await _wipe(args, settings, site, store)
    except (BotoCoreError, ClientError) as exc:
        print(f"cannot reach the bucket of {site.describe()} or {store.describe()}: {exc}; nothing more was "
              "erased. Check SUARA_S3_ENDPOINT_URL, SUARA_PHOTO_STORE_ENDPOINT_URL and the credentials, then run "
              "wipe again", file=sys.stderr)  # fmt: skip
        return 2
    finally:
        await store.close()
        if isinstance(site, S3Site):
            site.close()


async def _wipe(args: argparse.Namespace, settings: Settings, site: LocalSite | S3Site, store: ObjectStore) -> int:
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
            files = await asyncio.to_thread(site.paths)
            wrong = await asyncio.to_thread(unmarked, site, files, election)
            if wrong:
                print(f"refusing: {len(wrong)} file(s) of {site.describe()} do not carry the SIMULASI marker of "
                      f"{election!r}, so this may not be its site: {', '.join(wrong[:5])}",
                      file=sys.stderr)  # fmt: skip
                return 2
            if files and not any(f.endswith(_PAGES) for f in files):
                print(f"refusing: {site.describe()} holds files but no page or JSON file of a rehearsal",
                      file=sys.stderr)  # fmt: skip
                return 2
            photos = [r["sha256"] for r in await conn.fetch(TALLY_QUERIES.stored_photos)]
            if not args.yes:
                print(f"would erase rehearsal {election!r}: {len(files):,} files of {site.describe()}, "
                      f"{len(photos):,} photos of {store.describe()}, and its database (every row); add --yes to "
                      "erase")  # fmt: skip
                return 1
            await asyncio.to_thread(site.erase, files)
            removed = await asyncio.to_thread(erase_photos, store, photos)
            await unmigrate(conn, [component for component, _ in MIGRATION_DIRS])
    print(f"wiped rehearsal {election!r}: {len(files):,} site files, {removed:,} photos, and its database")
    return 0
