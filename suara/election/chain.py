"""The tamper-evident chain of stored submissions, and its signed head.

Each link hashes the previous link's hash with every stored fact of one submission, so rewriting or
dropping any record changes every hash after it; the head (position, last hash) is signed with tally's
chain key and published with every snapshot, so a chain cut back or rewritten after a head was
published no longer reaches it. `suara audit verify` recomputes the chain from the rows and
`suara audit site` checks the published heads. docs/domain.md specifies both encodings byte for byte,
so that an auditor can recompute them without this code.

The encoding is a sequence of items, each a 4-byte big-endian length then that many bytes: text is
UTF-8, an integer is 8 bytes big-endian two's complement, a list is one item holding its elements'
items one after the other. Nothing is ever ambiguous, whatever the fields contain.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from suara.election import signing
from suara.election.signing import ChainKey

GENESIS = bytes(32)
HASH_BYTES = 32
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The link encoding written for new submissions. Version 1 (rows stored before the tally migration
# 0006_chain_v2) covered neither TPS, contest, version, device, failed checks nor photos; its rows keep
# it, as re-linking them would change hashes already handed out in receipts and published heads.
CHAIN_VERSION = 2
CHAIN_VERSIONS = (1, 2)
_TAG_V1 = b"suara.chain.v1"
_TAG_V2 = b"suara.chain.v2"
HEAD_TAG = b"suara.chain-head.v1"


@dataclass(frozen=True)
class ChainRecord:
    """Every fact tally stores about one submission (its payload by hash), in link order."""

    position: int
    submission_id: str
    tps: str
    contest: str
    version: int
    device_id: str
    payload_sha256: bytes
    signature: bytes
    outcome: str
    failed_checks: Sequence[str]
    photo_sha256: Sequence[str]
    received_at: datetime


_INT = struct.Struct(">Iq")  # an integer's item: its length (8), then its value


def _item(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _int(value: int) -> bytes:
    return _INT.pack(8, value)


def _texts(values: Sequence[str]) -> bytes:
    return _item(b"".join(_item(v.encode()) for v in values))


def micros(at: datetime) -> int:
    """Microseconds since the Unix epoch, exact (as PostgreSQL stores a timestamptz)."""
    return (at - _EPOCH) // timedelta(microseconds=1)


_V2_TAG_ITEM = _item(_TAG_V2)


def link_encoding(previous: bytes, record: ChainRecord) -> bytes:
    """The bytes a version-2 link hashes (docs/domain.md, "The chain")."""
    r = record
    return b"".join(
        (
            _V2_TAG_ITEM,
            _item(previous),
            _int(r.position),
            _item(r.submission_id.encode()),
            _item(r.tps.encode()),
            _item(r.contest.encode()),
            _int(r.version),
            _item(r.device_id.encode()),
            _item(r.payload_sha256),
            _item(r.signature),
            _item(r.outcome.encode()),
            _texts(r.failed_checks),
            _texts(r.photo_sha256),
            _int(micros(r.received_at)),
        )
    )


def link_hash(previous: bytes, record: ChainRecord, chain_version: int = CHAIN_VERSION) -> bytes:
    if chain_version == 2:
        return hashlib.sha256(link_encoding(previous, record)).digest()
    if chain_version == 1:
        return _link_hash_v1(previous, record)
    raise ValueError(f"unknown chain version {chain_version}; known: {CHAIN_VERSIONS}")


def _link_hash_v1(previous: bytes, record: ChainRecord) -> bytes:
    """What links stored before chain version 2 hash (kept only to verify those rows)."""
    h = hashlib.sha256()
    h.update(_TAG_V1)
    h.update(_item(previous))
    h.update(struct.pack(">QQ", record.position, micros(record.received_at)))
    for part in (record.submission_id.encode(), record.payload_sha256, record.signature, record.outcome.encode()):
        h.update(_item(part))
    return h.digest()


def head_encoding(position: int, head_hash: bytes) -> bytes:
    """The bytes tally's chain key signs for a head (docs/domain.md, "The signed head")."""
    if len(head_hash) != HASH_BYTES:
        raise ValueError(f"a chain hash is {HASH_BYTES} bytes, got {len(head_hash)}")
    return _item(HEAD_TAG) + _int(position) + _item(head_hash)


def sign_head(key: ChainKey, position: int, head_hash: bytes) -> bytes:
    return key.sign(head_encoding(position, head_hash))


def head_signed_by(public_key: bytes, position: int, head_hash: bytes, signature: bytes) -> bool:
    if len(head_hash) != HASH_BYTES:
        return False
    return signing.verify(public_key, head_encoding(position, head_hash), signature)


@dataclass(frozen=True)
class SignedHead:
    """A chain head as tally signed it, and as the site publishes it."""

    position: int
    hash: bytes
    key_id: str
    signature: bytes

    def signed_by(self, public_key: bytes) -> bool:
        return head_signed_by(public_key, self.position, self.hash, self.signature)
