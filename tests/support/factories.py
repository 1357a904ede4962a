"""Building forms in tests: a consistent form from a few numbers, then mutate what a test needs.

The arithmetic here is the design's rules written out plainly (the oracle),
independent of suara.election.checks.
"""

from __future__ import annotations

import io
import random
import struct
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from suara.election.chain import ChainRecord
from suara.election.form import set_voter_counts
from suara.election.signing import DeviceKey
from suara.v1 import form_pb2, tally_pb2

# The election the test registry is loaded for (tests/support/databases.py): forms are signed for it.
TEST_ELECTION = "pemilu-test"


def consistent_form(
    tps: str,
    contest: str,
    choices: list[str],
    version: int = 1,
    *,
    seed: int = 0,
    dpt: int = 250,
    election_id: str = TEST_ELECTION,
) -> form_pb2.CHasilForm:
    """A form that passes every check: votes split at random, every identity holding, of the test
    registry's election."""
    rng = random.Random(f"{tps}:{contest}:{version}:{seed}")
    dpt_l = rng.randint(0, dpt)
    users_dpt = rng.randint(len(choices), dpt * 9 // 10)
    users_dpt_l = rng.randint(0, min(users_dpt, dpt_l))
    dptb, dptb_l = rng.randint(0, 5), 0
    dpk, dpk_l = rng.randint(0, 5), 0
    users = users_dpt + dptb + dpk
    total = rng.randint(users // 2, users)
    invalid = rng.randint(0, min(10, total))
    valid = total - invalid
    votes: dict[str, int] = {}
    left = valid
    for i, choice in enumerate(choices):
        n = left if i == len(choices) - 1 else rng.randint(0, left)
        votes[choice] = n
        left -= n
    form = form_pb2.CHasilForm(tps=tps, contest=contest, version=version, votes=votes, election_id=election_id)
    form.suara_sah = valid
    form.suara_tidak_sah = invalid
    form.suara_total = total
    set_voter_counts(
        form,
        (
            ("pemilih_dpt", dpt, dpt_l),
            ("pengguna_dpt", users_dpt, users_dpt_l),
            ("pengguna_dptb", dptb, dptb_l),
            ("pengguna_non_dpt", dpk, dpk_l),
            ("pengguna_total", users, users_dpt_l + dptb_l + dpk_l),
        ),
    )
    return form


def signed(key: DeviceKey, form: form_pb2.CHasilForm, photos: Sequence[bytes] = ()) -> tally_pb2.SubmitRequest:
    payload = form.SerializeToString()
    return tally_pb2.SubmitRequest(
        form=form_pb2.SignedForm(payload=payload, signature=key.sign(payload), device_id=key.device_id),
        photos=[tally_pb2.Photo(content=p) for p in photos],
    )


@dataclass(frozen=True)
class Station:
    """A TPS with its enrolled device key."""

    tps: str
    key: DeviceKey


def _image(kind: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, kind)
    return out.getvalue()


_JPEG, _PNG = _image("JPEG"), _image("PNG")


# Small images that decode (tally decodes every photo), with `tag` inside so each test's photo
# differs: in JPEG comment segments, in a PNG text chunk.
def jpeg(tag: bytes = b"") -> bytes:
    segments = b"".join(
        b"\xff\xfe" + struct.pack(">H", len(part) + 2) + part
        for part in (tag[i : i + 65533] for i in range(0, len(tag), 65533))
    )
    return _JPEG[:2] + segments + _JPEG[2:]


def png(tag: bytes = b"") -> bytes:
    data = b"tag\x00" + tag
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    return _PNG[:33] + chunk + _PNG[33:]  # after the signature (8) and IHDR (25)


def oracle_row(record: ChainRecord) -> dict[str, object]:
    """A stored submission row as the chain oracle reads it, holding `record`'s facts. Its payload is b"":
    the oracle hashes the payload, so a record meant to match carries SHA-256 of b"" (the row has no `chain`
    key: add it for a link of version 3)."""
    return {
        "chain_position": record.position,
        "id": uuid.UUID(record.submission_id),
        "tps": record.tps,
        "contest": record.contest,
        "version": record.version,
        "device_id": record.device_id,
        "payload": b"",
        "signature": record.signature,
        "outcome": record.outcome,
        "failed_checks": record.failed_checks,
        "photo_sha256": record.photo_sha256,
        "received_at": record.received_at,
    }
