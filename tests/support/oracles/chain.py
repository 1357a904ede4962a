"""The chain's link and signed-head encodings, written from docs/domain.md ("The chain", "The signed head")
and importing nothing of suara's: what an auditor in another language would write. Tests hold tally's
rows and the site's files against it, and an attacker in a test uses it to re-link a rewritten chain.

Items: a 4-byte big-endian length, then the bytes; text UTF-8; integers 8 bytes big-endian two's
complement; a list one item holding its elements' items.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

GENESIS = b"\x00" * 32


def item(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def integer(value: int) -> bytes:
    return item(value.to_bytes(8, "big", signed=True))


def text(value: str) -> bytes:
    return item(value.encode("utf-8"))


def texts(values: Iterable[str]) -> bytes:
    return item(b"".join(text(v) for v in values))


def micros(at: datetime) -> int:
    delta = at - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def chain_of(tps: str, chains: int) -> int:
    """The chain of a TPS: the first 8 bytes of SHA-256 of its code, unsigned big-endian, modulo K."""
    return int.from_bytes(hashlib.sha256(tps.encode("utf-8")).digest()[:8], "big") % chains


def link(previous: bytes, row: Mapping[str, Any], chains: int = 1) -> bytes:
    """The link of one tally.submission row (asyncpg record or dict with its columns): version 2 in a
    one-chain election, version 3 (the chain and the number of chains first) in one of several."""
    lead = item(b"suara.chain.v2") if chains == 1 else item(b"suara.chain.v3") + integer(row["chain"])
    lead += b"" if chains == 1 else integer(chains)
    message = b"".join(
        (
            lead,
            item(previous),
            integer(row["chain_position"]),
            text(str(row["id"])),
            text(row["tps"]),
            text(row["contest"]),
            integer(row["version"]),
            text(row["device_id"]),
            item(hashlib.sha256(bytes(row["payload"])).digest()),
            item(bytes(row["signature"])),
            text(row["outcome"]),
            texts(row["failed_checks"]),
            texts(row["photo_sha256"]),
            integer(micros(row["received_at"])),
        )
    )
    return hashlib.sha256(message).digest()


def head_message(position: int, head_hash: bytes, chain: int = 0, chains: int = 1) -> bytes:
    if chains == 1:
        return item(b"suara.chain-head.v1") + integer(position) + item(head_hash)
    return item(b"suara.chain-head.v2") + integer(chain) + integer(chains) + integer(position) + item(head_hash)


def key_id(public_key: bytes) -> str:
    return "chn_" + hashlib.sha256(public_key).hexdigest()[:24]


def head_verifies(public_key: bytes, published: Mapping[str, Any]) -> bool:
    """Whether a published head ({"position", "hash", "key_id", "signature"}, and "chain" and "chains"
    when the election runs several chains) is signed by this key."""
    if published.get("key_id") != key_id(public_key):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            bytes.fromhex(published["signature"]),
            head_message(
                published["position"],
                bytes.fromhex(published["hash"]),
                published.get("chain", 0),
                published.get("chains", 1),
            ),
        )
    except InvalidSignature:
        return False
    return True


def signed_head(key: Ed25519PrivateKey, key_public: bytes, position: int, head_hash: bytes) -> dict[str, Any]:
    """A head as the site publishes it, signed with `key` (a test forging a validly signed site)."""
    return {
        "position": position,
        "hash": head_hash.hex(),
        "key_id": key_id(key_public),
        "signature": key.sign(head_message(position, head_hash)).hex(),
    }
