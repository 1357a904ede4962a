"""Standalone verification of the tamper-evident chain, straight from the database.

Recomputes every payload hash and every link of every chain from its genesis,
checks each signature against the device key it names, that the stored TPS,
contest and version are the signed form's, that each chain's positions run 1..N
without a gap, that each stored head is its chain's last link, that every row is
in the chain its TPS hashes to, and that every stored photo still has the hash
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
from suara.election.chain import CHAIN_VERSION_CHAINS, CHAIN_VERSIONS, GENESIS, ChainRecord, chain_of, link_hash
from suara.runtime.objects import ObjectStore
from suara.v1 import form_pb2


@dataclass
class AuditReport:
    records: int = 0
    head_position: int = 0
    head_hash: str = ""
    problems: list[str] = field(default_factory=list)
    chains: int = 1
    heads: dict[int, tuple[int, str]] = field(default_factory=dict)  # chain → (records, last hash hex)

    @property
    def ok(self) -> bool:
        return not self.problems


Published = Mapping[int, bytes] | Mapping[tuple[int, int], bytes]


def _published_by_chain(published: Published | None) -> dict[int, dict[int, bytes]]:
    """position → hash (chain 0's, as one-chain sites publish) or (chain, position) → hash, by chain."""
    by_chain: dict[int, dict[int, bytes]] = {}
    for key, head_hash in (published or {}).items():
        chain, position = key if isinstance(key, tuple) else (0, key)
        by_chain.setdefault(chain, {})[position] = head_hash
    return by_chain


@dataclass
class _Walk:
    """One chain being recomputed."""

    previous: bytes = GENESIS
    expected: int = 1
    newest_version: int = min(CHAIN_VERSIONS)


async def verify_chain(
    conn: asyncpg.Connection,
    *,
    check_signatures: bool = True,
    progress: Callable[[int, int], None] | None = None,
    max_problems: int = 100,
    published: Published | None = None,
    photos: ObjectStore | None = None,
) -> AuditReport:
    """`published`: heads known to have been published (their signatures checked): position → hash
    for a one-chain election, (chain, position) → hash for any. Every chain is checked on its own:
    gapless from 1, each link recomputed, its head row its last link, each row in the chain its TPS
    hashes to. `photos`: the photo store, to check the photos whose bytes are there (None: only those
    in the database)."""
    report = AuditReport()
    wanted = _published_by_chain(published)
    walks: dict[int, _Walk] = {}
    # One snapshot for the heads and the rows, so submissions arriving meanwhile do not look like tampering.
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        chains = int((await conn.fetchrow(QUERIES.chain_count))["chains"])
        report.chains = chains
        heads = {row["chain"]: row for row in await conn.fetch(QUERIES.chain_heads)}
        total = sum(h["position"] for h in heads.values())
        async for row in conn.cursor(QUERIES.chain_records, prefetch=2000):
            report.records += 1
            chain, position = row["chain"], row["chain_position"]
            walk = walks.setdefault(chain, _Walk())
            named = f"chain {chain} position {position}" if chains > 1 else f"position {position}"
            where = f"{named} (submission {row['id']}, TPS {row['tps']} {row['contest']} v{row['version']})"
            if position != walk.expected:
                report.problems.append(
                    f"gap in {'chain ' + str(chain) if chains > 1 else 'the chain'}: "
                    f"expected position {walk.expected}, found {position}"
                )
                walk.expected = position
            report.problems.extend(f"{where}: {p}" for p in _row_problems(row, check_signatures))
            if chain != chain_of(row["tps"], chains):
                report.problems.append(
                    f"{where}: is in chain {chain}, but its TPS belongs in chain {chain_of(row['tps'], chains)} "
                    f"of {chains}"
                )
            version = row["chain_version"]
            if version < walk.newest_version:
                report.problems.append(f"{where}: chain version {version} after version {walk.newest_version}")
            if (version == CHAIN_VERSION_CHAINS) != (chains > 1):
                report.problems.append(f"{where}: chain version {version} in an election of {chains} chain(s)")
            walk.newest_version = max(walk.newest_version, version)
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
                chain,
                chains,
            )
            walk.previous = link_hash(walk.previous, record, version)
            if walk.previous != bytes(row["chain_hash"]):
                report.problems.append(f"{where}: link hash does not match (the record or one before it was altered)")
                walk.previous = bytes(row["chain_hash"])  # keep checking the rest against what is stored
            published_here = wanted.get(chain, {})
            if position in published_here and published_here[position] != walk.previous:
                report.problems.append(
                    f"{where}: the chain no longer reaches the head published at position {position} "
                    f"({published_here[position].hex()}): rewritten at or before it"
                )
            walk.expected += 1
            if progress is not None and report.records % 5000 == 0:
                progress(report.records, total)
            if len(report.problems) >= max_problems:
                report.problems.append("… stopping after too many problems")
                break
        else:
            report.problems.extend(await _photo_problems(conn, photos))
    if sorted(heads) != list(range(chains)):
        report.problems.append(f"the election runs {chains} chain(s), but the head rows are of chains {sorted(heads)}")
    for chain in sorted(set(heads) | set(walks) | set(wanted)):
        walk = walks.get(chain, _Walk())
        records = walk.expected - 1
        report.heads[chain] = (records, walk.previous.hex())
        # One chain keeps the wording it always had; with several, each problem names its chain.
        head_of, the_chain = (f"chain {chain}'s head", f"chain {chain}") if chains > 1 else ("chain head", "the chain")
        of_chain = f" of chain {chain}" if chains > 1 else ""
        head = heads.get(chain)
        if head is None:
            pass  # reported above
        elif head["position"] != records:
            report.problems.append(f"{head_of} says {head['position']} records, {the_chain} has {records}")
        elif bytes(head["hash"]) != walk.previous:
            report.problems.append(f"{head_of} hash does not match the last link")
        published_here = wanted.get(chain, {})
        if published_here and max(published_here) > records:
            newest = max(published_here)
            report.problems.append(
                f"a head{of_chain} at position {newest} ({published_here[newest].hex()}) was published, but "
                f"{the_chain} has {records} records: records were deleted since"
            )
    report.head_position = report.records
    report.head_hash = report.heads.get(0, (0, GENESIS.hex()))[1]
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
