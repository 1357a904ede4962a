"""Every link covers every stored fact of its submission, in the encoding docs/domain.md documents.

The oracle (tests/support/oracles/chain.py) is that documentation written out independently; tally's rows
are held against it, and so is the library's encoding over arbitrary records.
"""

from __future__ import annotations

import hashlib
import json
import struct
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.tally.audit import verify_chain
from suara.election import chain
from suara.election.signing import ChainKey
from suara.v1 import tally_pb2
from tests.support.factories import consistent_form, jpeg, oracle_row, png, signed
from tests.support.oracles import chain as oracle
from tests.support.tally import BASE_SETTINGS, CHAIN_KEY, Tally, start_tally, with_tally


async def _night(tally: Tally) -> None:
    """Every kind of row: photos, a quarantined form, a correction, a late (superseded) version."""
    choices = tally.contests["ppwp"]
    for i in range(3):
        st_ = await tally.station()
        photos = [jpeg(f"{st_.tps}-{i}".encode()), png(b"x" * i)]
        form = consistent_form(st_.tps, "ppwp", choices, 2)
        form.photo_sha256.extend(hashlib.sha256(p).hexdigest() for p in photos)
        assert (await tally.stub.Submit(signed(st_.key, form, photos))).outcome == tally_pb2.OUTCOME_ACCEPTED
        late = consistent_form(st_.tps, "ppwp", choices, 1)
        assert (await tally.stub.Submit(signed(st_.key, late))).outcome == tally_pb2.OUTCOME_SUPERSEDED
        bad = consistent_form(st_.tps, "ppwp", choices, 3)
        bad.suara_tidak_sah += 1
        assert (await tally.stub.Submit(signed(st_.key, bad))).outcome == tally_pb2.OUTCOME_QUARANTINED


async def _rows(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(await db.fetch("SELECT * FROM tally.submission ORDER BY chain_position"))


async def test_every_stored_link_is_the_documented_encoding_of_its_row(tally: Tally) -> None:
    await _night(tally)
    rows = await _rows(tally.db)
    assert len(rows) == 9 and any(r["photo_sha256"] for r in rows) and any(r["failed_checks"] for r in rows)
    previous = oracle.GENESIS
    for row in rows:
        previous = oracle.link(previous, row)
        assert (row["chain_version"], bytes(row["chain_hash"])) == (2, previous), row["chain_position"]
    head = await tally.db.fetchrow("SELECT position, hash FROM tally.chain_head")
    assert (head["position"], bytes(head["hash"])) == (len(rows), previous)
    assert (await verify_chain(tally.db)).ok


# Each stored fact, rewritten as someone with write access to the database could (column, new value).
REWRITES: dict[str, Callable[[Any, dict[str, str]], object]] = {
    "tps": lambda row, other: other["tps"],
    "contest": lambda row, other: "pdpr",
    "version": lambda row, other: row["version"] + 100,
    "device_id": lambda row, other: other["device_id"],
    "failed_checks": lambda row, other: ["sum_choices_ne_suara_sah"],
    "photo_sha256": lambda row, other: [],
    "outcome": lambda row, other: "SUPERSEDED",
    "received_at": lambda row, other: row["received_at"] + timedelta(microseconds=1),
    "signature": lambda row, other: bytes(64),
}


@pytest.mark.parametrize("column", sorted(REWRITES))
async def test_rewriting_any_stored_fact_breaks_its_link(tally: Tally, column: str) -> None:
    await _night(tally)
    victim = (await _rows(tally.db))[0]  # a row with photos and no failed checks
    assert victim["photo_sha256"] and not victim["failed_checks"]
    other_station = await tally.station(victim["tps"] if column == "device_id" else None)
    other = {"tps": other_station.tps, "device_id": other_station.key.device_id}
    await tally.db.execute(
        f"UPDATE tally.submission SET {column} = $1 WHERE id = $2", REWRITES[column](victim, other), victim["id"]
    )
    # Signatures not checked: the link alone must find it (a device id or outcome is not in the signed bytes).
    report = await verify_chain(tally.db, check_signatures=False)
    position = victim["chain_position"]
    assert any(f"position {position} " in p and "link hash" in p for p in report.problems), report.problems


def _v1_link(previous: bytes, row: Any) -> bytes:
    """Chain version 1, as tally wrote it before migration 0003 (docs/domain.md keeps its definition)."""
    at = row["received_at"] - datetime(1970, 1, 1, tzinfo=UTC)
    micros = (at.days * 86_400 + at.seconds) * 1_000_000 + at.microseconds
    parts = (str(row["id"]).encode(), bytes(row["payload_sha256"]), bytes(row["signature"]), row["outcome"].encode())
    message = b"suara.chain.v1" + oracle.item(previous) + struct.pack(">QQ", row["chain_position"], micros)
    return hashlib.sha256(message + b"".join(oracle.item(p) for p in parts)).digest()


async def test_rows_linked_before_the_migration_keep_verifying_and_cannot_come_after_newer_ones(
    tally: Tally,
) -> None:
    choices = tally.contests["ppwp"]
    first = await tally.station()
    for version in (1, 2):
        await tally.stub.Submit(signed(first.key, consistent_form(first.tps, "ppwp", choices, version)))
    # Those two rows as the code before chain version 2 wrote them, head and all.
    previous = oracle.GENESIS
    for row in await _rows(tally.db):
        previous = _v1_link(previous, row)
        await tally.db.execute(
            "UPDATE tally.submission SET chain_version = 1, chain_hash = $1 WHERE id = $2", previous, row["id"]
        )
    await tally.db.execute("UPDATE tally.chain_head SET hash = $1", previous)
    second = await tally.station()
    for version in (1, 2):
        await tally.stub.Submit(signed(second.key, consistent_form(second.tps, "ppwp", choices, version)))

    rows = await _rows(tally.db)
    assert [r["chain_version"] for r in rows] == [1, 1, 2, 2]
    assert bytes(rows[2]["chain_hash"]) == oracle.link(bytes(rows[1]["chain_hash"]), rows[2])
    report = await verify_chain(tally.db)
    assert report.ok, report.problems

    # A newer row passed off as version 1 (its link redone so), to escape what version 2 covers.
    downgraded = _v1_link(bytes(rows[2]["chain_hash"]), rows[3])
    await tally.db.execute(
        "UPDATE tally.submission SET chain_version = 1, chain_hash = $1 WHERE id = $2", downgraded, rows[3]["id"]
    )
    await tally.db.execute("UPDATE tally.chain_head SET hash = $1", downgraded)
    report = await verify_chain(tally.db)
    assert report.problems == [
        f"position 4 (submission {rows[3]['id']}, TPS {second.tps} ppwp v2): chain version 1 after version 2"
    ]


async def test_a_stored_photo_whose_bytes_changed_or_went_missing_is_found(
    db_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    tally = await start_tally(db_url, db, with_tally(BASE_SETTINGS, photo_store=str(tmp_path / "photos")))
    try:
        await _night(tally)
        photos = tally.app.service.photos
        assert (await verify_chain(tally.db, photos=photos)).problems == []
        altered, missing = await tally.db.fetch("SELECT sha256 FROM tally.photo ORDER BY sha256 LIMIT 2")
        in_store = tmp_path / "photos" / altered["sha256"][:2] / altered["sha256"][2:4] / altered["sha256"]
        in_store.write_bytes(in_store.read_bytes() + b"\x00")
        sha = missing["sha256"]
        (tmp_path / "photos" / sha[:2] / sha[2:4] / sha).unlink()
        # A row from before the photo store, its bytes in the database, altered there.
        old = jpeg(b"stored in the database")
        old_sha = hashlib.sha256(old).hexdigest()
        await tally.db.execute(
            "INSERT INTO tally.photo (sha256, content_type, size, content) VALUES ($1, 'image/jpeg', $2, $3)",
            old_sha,
            len(old),
            old + b"\x00",
        )
        report = await verify_chain(tally.db, photos=photos)
        assert sorted(report.problems) == sorted(
            [
                f"photo {altered['sha256']}: its bytes no longer have that SHA-256",
                f"photo {sha}: missing from the photo store {tmp_path / 'photos'}",
                f"photo {old_sha}: its bytes no longer have that SHA-256",
            ]
        )
        # Without the store, only the database's own bytes can be checked.
        assert (await verify_chain(tally.db)).problems == [f"photo {old_sha}: its bytes no longer have that SHA-256"]
    finally:
        await tally.close()


_text = st.text(max_size=20)
_records = st.builds(
    chain.ChainRecord,
    position=st.integers(1, 2**62),
    submission_id=st.uuids().map(str),
    tps=_text,
    contest=_text,
    version=st.integers(1, 2**62),
    device_id=_text,
    payload_sha256=st.binary(min_size=32, max_size=32),
    signature=st.binary(min_size=64, max_size=64),
    outcome=_text,
    failed_checks=st.lists(_text, max_size=4),
    photo_sha256=st.lists(_text, max_size=4),
    received_at=st.datetimes(timezones=st.just(UTC)),
)


@given(previous=st.binary(min_size=32, max_size=32), record=_records)
def test_the_library_link_is_the_documented_encoding(previous: bytes, record: chain.ChainRecord) -> None:
    row = oracle_row(record)
    with_empty_payload = chain.ChainRecord(**{**vars(record), "payload_sha256": hashlib.sha256(b"").digest()})
    assert chain.link_hash(previous, with_empty_payload) == oracle.link(previous, row)


@given(
    fields=st.tuples(st.lists(st.text(max_size=3), max_size=3), st.lists(st.text(max_size=3), max_size=3)),
    other=st.tuples(st.lists(st.text(max_size=3), max_size=3), st.lists(st.text(max_size=3), max_size=3)),
)
def test_lists_are_unambiguous(fields: tuple[list[str], list[str]], other: tuple[list[str], list[str]]) -> None:
    """Moving text between the failed checks and the photos, or within either, always changes the link."""
    base = chain.ChainRecord(
        1, str(uuid.UUID(int=0)), "t", "c", 1, "d", bytes(32), bytes(64), "o", [], [], datetime.now(UTC)
    )
    a = chain.ChainRecord(**{**vars(base), "failed_checks": fields[0], "photo_sha256": fields[1]})
    b = chain.ChainRecord(**{**vars(base), "failed_checks": other[0], "photo_sha256": other[1]})
    assert (chain.link_hash(bytes(32), a) == chain.link_hash(bytes(32), b)) == (fields == other)


@given(position=st.integers(0, 2**62), head_hash=st.binary(min_size=32, max_size=32))
def test_the_signed_head_is_the_documented_encoding(position: int, head_hash: bytes) -> None:
    assert chain.head_encoding(position, head_hash) == oracle.head_message(position, head_hash)


async def test_the_head_tally_hands_out_is_signed_by_its_chain_key(tally: Tally) -> None:
    empty = await tally.stub.GetChainHead(tally_pb2.GetChainHeadRequest())
    await _night(tally)
    reply = await tally.stub.GetChainHead(tally_pb2.GetChainHeadRequest())
    stored = await tally.db.fetchrow("SELECT position, hash FROM tally.chain_head")
    assert (reply.chain_key.key_id, reply.chain_key.public_key) == (CHAIN_KEY.key_id, CHAIN_KEY.public_key)
    for got, position, head_hash in ((empty, 0, bytes(32)), (reply, stored["position"], bytes(stored["hash"]))):
        published = {
            "position": got.chain_head.position,
            "hash": got.chain_head.hash,
            "key_id": got.chain_head.key_id,
            "signature": got.chain_head.signature.hex(),
        }
        assert (published["position"], published["hash"]) == (position, head_hash.hex())
        assert oracle.head_verifies(CHAIN_KEY.public_key, published)
        assert not oracle.head_verifies(CHAIN_KEY.public_key, {**published, "position": position + 1})


def test_a_chain_key_file_is_made_once_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "chain.key.json"
    made, created = ChainKey.load_or_create(path)
    again, created_again = ChainKey.load_or_create(path)
    assert (created, created_again) == (True, False)
    assert (again.key_id, again.public_key) == (made.key_id, made.public_key) and made.key_id == oracle.key_id(
        made.public_key
    )
    assert path.stat().st_mode & 0o777 == 0o600 and [p.name for p in path.parent.iterdir()] == [path.name]
    document = json.loads(path.read_text())
    document["key_id"] = "chn_" + "0" * 24
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="key_id does not match"):
        ChainKey.load(path)
