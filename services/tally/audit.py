"""Standalone verification of the tamper-evident chain, straight from the database.

Recomputes every payload hash and every link from the genesis, checks each
signature against the device key it names, that the stored TPS, contest and
version are the signed form's, that positions run 1..N without a gap, that the
stored head is the last link, and that every stored photo still has the hash
that names it (in the database, or in the photo store when given one). Given
published heads (`suara audit verify --against`), also that the chain still
reaches each of them: a chain cut back or rewritten after
a head was published, head row and all, no longer does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import asyncpg
from google.protobuf.message import DecodeError

from services.tally.queries import QUERIES
from suara.election import signing
from suara.election.chain import CHAIN_VERSIONS, GENESIS, ChainRecord, link_hash
from suara.runtime.objects import ObjectStore
from suara.v1 import form_pb2


@dataclass
class AuditReport:
    records: int = 0
    head_position: int = 0
    head_hash: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


async def verify_chain(
    conn: asyncpg.Connection,
    *,
    check_signatures: bool = True,
    progress: Callable[[int, int], None] | None = None,
    max_problems: int = 100,
    published: Mapping[int, bytes] | None = None,
    photos: ObjectStore | None = None,
) -> AuditReport:
    """`published`: position → hash of heads known to have been published (their signatures checked).
    `photos`: the photo store, to check the photos whose bytes are there (None: only those in the database)."""
    report = AuditReport()
    published = published or {}
    previous = GENESIS
    expected = 1
    newest_version = min(CHAIN_VERSIONS)
    # One snapshot for the head and the rows, so submissions arriving meanwhile do not look like tampering.
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        head = await conn.fetchrow(QUERIES.chain_head)
        total = head["position"]
        async for row in conn.cursor(QUERIES.chain_records, prefetch=2000):
            report.records += 1
            position = row["chain_position"]
            where = f"position {position} (submission {row['id']}, TPS {row['tps']} {row['contest']} v{row['version']})"
            if position != expected:
                report.problems.append(f"gap in the chain: expected position {expected}, found {position}")
                expected = position
            report.problems.extend(f"{where}: {p}" for p in _row_problems(row, check_signatures))
            version = row["chain_version"]
            if version < newest_version:
                report.problems.append(f"{where}: chain version {version} after version {newest_version}")
            newest_version = max(newest_version, version)
            record = ChainRecord(
                position,
                str(row["id"]),
                row["tps"],
                row["contest"],
                row["version"],
                row["device_id"],
                hashlib.sha256(bytes(row["payload"])).digest(),
                bytes(row["signature"]),
                row["outcome"],
                row["failed_checks"],
                row["photo_sha256"],
                row["received_at"],
            )
            previous = link_hash(previous, record, version)
            if previous != bytes(row["chain_hash"]):
                report.problems.append(f"{where}: link hash does not match (the record or one before it was altered)")
                previous = bytes(row["chain_hash"])  # keep checking the rest against what is stored
            if position in published and published[position] != previous:
                report.problems.append(
                    f"{where}: the chain no longer reaches the head published at position {position} "
                    f"({published[position].hex()}): rewritten at or before it"
                )
            expected += 1
            if progress is not None and report.records % 5000 == 0:
                progress(report.records, total)
            if len(report.problems) >= max_problems:
                report.problems.append("… stopping after too many problems")
                break
        else:
            report.problems.extend(await _photo_problems(conn, photos))
    report.head_position = report.records
    report.head_hash = previous.hex()
    if head["position"] != report.records:
        report.problems.append(f"chain head says {head['position']} records, the chain has {report.records}")
    elif bytes(head["hash"]) != previous:
        report.problems.append("chain head hash does not match the last link")
    if published and max(published) > report.records:
        newest = max(published)
        report.problems.append(
            f"a head at position {newest} ({published[newest].hex()}) was published, but the chain has "
            f"{report.records} records: records were deleted since"
        )
    if progress is not None:
        progress(report.records, total)
    return report


def _row_problems(row: asyncpg.Record, check_signatures: bool) -> list[str]:
    """What is wrong with one stored submission on its own: its payload against its stored hash, its
    signature, and the columns tally filled from the signed form against the form."""
    problems = []
    payload = bytes(row["payload"])
    if hashlib.sha256(payload).digest() != bytes(row["payload_sha256"]):
        problems.append("payload does not match its stored SHA-256")
    if row["public_key"] is None:
        problems.append(f"names device {row['device_id']!r}, which is not enrolled")
    elif check_signatures and not signing.verify(bytes(row["public_key"]), payload, bytes(row["signature"])):
        problems.append("signature does not verify with the device's key")
    elif row["device_tps"] != row["tps"]:
        problems.append(f"device {row['device_id']} is enrolled for TPS {row['device_tps']}, not this one")
    try:
        form = form_pb2.CHasilForm.FromString(payload)
    except DecodeError:
        return [*problems, "payload is not a CHasilForm"]
    signed = (form.tps, form.contest, form.version, list(form.photo_sha256))
    stored = (row["tps"], row["contest"], row["version"], list(row["photo_sha256"]))
    if signed != stored:
        problems.append(f"stored TPS, contest, version or photos {stored} are not the signed form's {signed}")
    return problems


async def _photo_problems(conn: asyncpg.Connection, photos: ObjectStore | None) -> list[str]:
    problems = []
    async for row in conn.cursor(QUERIES.photo_hashes, prefetch=50):
        content = row["content"]
        if content is None:  # in the photo store (migration 0008)
            if photos is None:
                continue
            content = await photos.get(row["sha256"])
            if content is None:
                problems.append(f"photo {row['sha256']}: missing from the photo store {photos.describe()}")
                continue
        if hashlib.sha256(bytes(content)).hexdigest() != row["sha256"]:
            problems.append(f"photo {row['sha256']}: its bytes no longer have that SHA-256")
    return problems
