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
# Version 3 is version 2 with the chain's number and the number of chains in front, written only when
# an election runs several chains (K > 1), so a one-chain election's links stay byte-identical to v2.
CHAIN_VERSION = 2
CHAIN_VERSION_CHAINS = 3
CHAIN_VERSIONS = (1, 2, 3)
_TAG_V1 = b"suara.chain.v1"
_TAG_V2 = b"suara.chain.v2"
_TAG_V3 = b"suara.chain.v3"
HEAD_TAG = b"suara.chain-head.v1"
HEAD_TAG_CHAINS = b"suara.chain-head.v2"
MAX_CHAINS = 1024


def chain_of(tps: str, chains: int) -> int:
    """The chain a TPS's forms are linked into: the first 8 bytes of SHA-256 of the TPS code (UTF-8),
    as an unsigned big-endian integer, modulo the number of chains. Stable across processes and
    languages (unlike Python's hash()), so every version of a TPS and contest lands in one chain."""
    if not 1 <= chains <= MAX_CHAINS:
        raise ValueError(f"the number of chains is 1 to {MAX_CHAINS}, got {chains}")
    return int.from_bytes(hashlib.sha256(tps.encode()).digest()[:8], "big") % chains


def version_for(chains: int) -> int:
    """The link version new rows are written with when an election runs `chains` chains."""
    return CHAIN_VERSION if chains == 1 else CHAIN_VERSION_CHAINS


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
    chain: int = 0  # which of the election's chains (version 3 links only)
    chains: int = 1


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


_V3_TAG_ITEM = _item(_TAG_V3)


def link_encoding(previous: bytes, record: ChainRecord, chain_version: int = CHAIN_VERSION) -> bytes:
    """The bytes a version-2 or version-3 link hashes (docs/domain.md, "The chain")."""
    r = record
    if chain_version == CHAIN_VERSION_CHAINS:
        lead: tuple[bytes, ...] = (_V3_TAG_ITEM, _int(r.chain), _int(r.chains))
    else:
        lead = (_V2_TAG_ITEM,)
    return b"".join(
        (
            *lead,
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
    if chain_version in (2, 3):
        return hashlib.sha256(link_encoding(previous, record, chain_version)).digest()
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


def head_encoding(position: int, head_hash: bytes, chain: int = 0, chains: int = 1) -> bytes:
    """The bytes tally's chain key signs for a head (docs/domain.md, "The signed head"). With several
    chains the head names its chain and their number, so one chain's head cannot pass for another's."""
    if len(head_hash) != HASH_BYTES:
        raise ValueError(f"a chain hash is {HASH_BYTES} bytes, got {len(head_hash)}")
    if chains == 1:
        return _item(HEAD_TAG) + _int(position) + _item(head_hash)
    return _item(HEAD_TAG_CHAINS) + _int(chain) + _int(chains) + _int(position) + _item(head_hash)


def sign_head(key: ChainKey, position: int, head_hash: bytes, chain: int = 0, chains: int = 1) -> bytes:
    return key.sign(head_encoding(position, head_hash, chain, chains))


def head_signed_by(
    public_key: bytes, position: int, head_hash: bytes, signature: bytes, chain: int = 0, chains: int = 1
) -> bool:
    if len(head_hash) != HASH_BYTES:
        return False
    return signing.verify(public_key, head_encoding(position, head_hash, chain, chains), signature)


@dataclass(frozen=True)
class SignedHead:
    """A chain head as tally signed it, and as the site publishes it."""

    position: int
    hash: bytes
    key_id: str
    signature: bytes
    chain: int = 0
    chains: int = 1

    def signed_by(self, public_key: bytes) -> bool:
        return head_signed_by(public_key, self.position, self.hash, self.signature, self.chain, self.chains)
