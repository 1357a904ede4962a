"""Standalone verification of the tamper-evident chain, straight from the database.

Recomputes every payload hash and every link from the genesis, checks each
signature against the device key it names, that positions run 1..N without a
gap, and that the stored head is the last link.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from services.tally.queries import QUERIES
from suara.election import signing
from suara.election.chain import GENESIS, ChainRecord, link_hash


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
) -> AuditReport:
    report = AuditReport()
    previous = GENESIS
    expected = 1
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
            payload_sha = hashlib.sha256(bytes(row["payload"])).digest()
            if payload_sha != bytes(row["payload_sha256"]):
                report.problems.append(f"{where}: payload does not match its stored SHA-256")
            if check_signatures and not signing.verify(
                bytes(row["public_key"]), bytes(row["payload"]), bytes(row["signature"])
            ):
                report.problems.append(f"{where}: signature does not verify with the device's key")
            record = ChainRecord(
                position,
                str(row["id"]),
                payload_sha,
                bytes(row["signature"]),
                row["outcome"],
                row["received_at"],
            )
            previous = link_hash(previous, record)
            if previous != bytes(row["chain_hash"]):
                report.problems.append(f"{where}: link hash does not match (the record or one before it was altered)")
                previous = bytes(row["chain_hash"])  # keep checking the rest against what is stored
            expected += 1
            if progress is not None and report.records % 5000 == 0:
                progress(report.records, total)
            if len(report.problems) >= max_problems:
                report.problems.append("… stopping after too many problems")
                break
    report.head_position = report.records
    report.head_hash = previous.hex()
    if head["position"] != report.records:
        report.problems.append(f"chain head says {head['position']} records, the chain has {report.records}")
    elif bytes(head["hash"]) != previous:
        report.problems.append("chain head hash does not match the last link")
    if progress is not None:
        progress(report.records, total)
    return report
