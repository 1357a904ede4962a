"""The tamper-evident chain of stored submissions.

Each link hashes the previous link's hash with what was stored, so rewriting
or dropping any record changes every hash after it. The head is published with
every snapshot, and `suara audit verify` recomputes the chain from the rows.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

GENESIS = bytes(32)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class ChainRecord:
    position: int
    submission_id: str
    payload_sha256: bytes
    signature: bytes
    outcome: str
    received_at: datetime


def _field(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def link_hash(previous: bytes, record: ChainRecord) -> bytes:
    micros = (record.received_at - _EPOCH) // timedelta(microseconds=1)  # exact, as PostgreSQL stores it
    h = hashlib.sha256()
    h.update(b"suara.chain.v1")
    h.update(_field(previous))
    h.update(struct.pack(">QQ", record.position, micros))
    for part in (
        record.submission_id.encode(),
        record.payload_sha256,
        record.signature,
        record.outcome.encode(),
    ):
        h.update(_field(part))
    return h.digest()
