"""K chains (docs/domain.md, "The chain"): every version of a TPS in the chain SHA-256 of its code picks,
each chain gapless with its own signed head, receipts naming their chain, and `audit verify` checking all.

The oracle (tests/support/oracles/chain.py) is the documentation written out independently.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.tally.audit import verify_chain
from services.tally.committer import GroupCommitter
from services.tally.intake import Prepared
from suara.election import chain
from suara.runtime.settings import SettingError
from suara.v1 import tally_pb2
from tests.support.factories import consistent_form, oracle_row, signed
from tests.support.oracles import chain as oracle
from tests.support.tally import BASE_SETTINGS, CHAIN_KEY, Tally, start_tally, with_tally

K = 4
_tps_codes = st.text(alphabet="0123456789", min_size=13, max_size=13)


@given(tps=_tps_codes, chains=st.integers(1, chain.MAX_CHAINS))
def test_a_tps_always_maps_to_the_documented_chain(tps: str, chains: int) -> None:
    picked = chain.chain_of(tps, chains)
    assert picked == oracle.chain_of(tps, chains) and 0 <= picked < chains


_forms = st.lists(
    st.tuples(_tps_codes, st.sampled_from(["ppwp", "dpr", "dpd"]), st.integers(1, 2**31)), min_size=1, max_size=30
)


@given(forms=_forms, chains=st.integers(1, 16))
def test_the_committer_puts_every_version_of_a_tps_in_its_chain(forms: list[tuple[str, str, int]], chains: int) -> None:
    """Whatever the mix of TPS, contests and versions, each form is queued for the chain its TPS hashes to:
    every version of a TPS and contest in one chain."""

    async def lanes() -> list[list[str]]:
        committer = GroupCommitter(None, None, 10, 1.0, chains)  # type: ignore[arg-type]  # never started
        prepared = [Prepared(t, c, v, b"", bytes(32), bytes(64), "d", [], {}, []) for t, c, v in forms]
        committer.enqueue(prepared)
        return [[q.get_nowait().prepared.tps for _ in range(q.qsize())] for q in committer._queues]

    queued = asyncio.run(lanes())
    assert sorted(t for lane in queued for t in lane) == sorted(t for t, _, _ in forms)
    for lane_no, lane in enumerate(queued):
        assert all(oracle.chain_of(t, chains) == lane_no for t in lane)


_records = st.builds(
    chain.ChainRecord,
    position=st.integers(1, 2**62),
    submission_id=st.uuids().map(str),
    tps=_tps_codes,
    contest=st.text(max_size=10),
    version=st.integers(1, 2**62),
    device_id=st.text(max_size=10),
    payload_sha256=st.just(hashlib.sha256(b"").digest()),
    signature=st.binary(min_size=64, max_size=64),
    outcome=st.sampled_from(["ACCEPTED", "QUARANTINED", "SUPERSEDED"]),
    failed_checks=st.lists(st.text(max_size=5), max_size=3),
    photo_sha256=st.lists(st.text(max_size=5), max_size=3),
    received_at=st.datetimes(timezones=st.just(UTC)),
    chain=st.integers(0, 63),
    chains=st.integers(2, 64),
)


@given(previous=st.binary(min_size=32, max_size=32), record=_records)
def test_a_version_3_link_is_the_documented_encoding(previous: bytes, record: chain.ChainRecord) -> None:
    row = {**oracle_row(record), "chain": record.chain}
    assert chain.link_hash(previous, record, 3) == oracle.link(previous, row, record.chains)
    # The same facts in another chain are another link: a row cannot be moved between chains.
    moved = chain.ChainRecord(**{**vars(record), "chain": record.chain + 1})
    assert chain.link_hash(previous, moved, 3) != chain.link_hash(previous, record, 3)


@given(
    chain_no=st.integers(0, 63),
    chains=st.integers(2, 64),
    position=st.integers(0, 2**62),
    head_hash=st.binary(min_size=32, max_size=32),
)
def test_a_head_of_several_chains_is_the_documented_encoding(
    chain_no: int, chains: int, position: int, head_hash: bytes
) -> None:
    assert chain.head_encoding(position, head_hash, chain_no, chains) == oracle.head_message(
        position, head_hash, chain_no, chains
    )
    assert chain.head_encoding(position, head_hash, chain_no, chains) != chain.head_encoding(
        position, head_hash, chain_no + 1, chains
    )


@pytest.fixture
async def tally4(db_url: str, db: asyncpg.Connection) -> AsyncIterator[Tally]:
    t = await start_tally(db_url, db, with_tally(BASE_SETTINGS, chains=K))
    yield t
    await t.close()


async def _night(tally: Tally, stations: int = 24) -> dict[str, list[tally_pb2.SubmitResponse]]:
    """Two versions from each of `stations` TPS, sent all at once (the K lanes commit side by side)."""
    choices = tally.contests["ppwp"]
    sts = [await tally.station() for _ in range(stations)]
    requests = [
        (s.tps, signed(s.key, consistent_form(s.tps, "ppwp", choices, version))) for s in sts for version in (1, 2)
    ]
    replies = await asyncio.gather(*(tally.stub.Submit(r) for _, r in requests))
    by_tps: dict[str, list[tally_pb2.SubmitResponse]] = {}
    for (tps, _), reply in zip(requests, replies, strict=True):
        by_tps.setdefault(tps, []).append(reply)
    return by_tps


async def _heads(tally: Tally) -> dict[int, tuple[int, bytes]]:
    rows = await tally.db.fetch("SELECT chain, position, hash FROM tally.chain_head")
    return {r["chain"]: (r["position"], bytes(r["hash"])) for r in rows}


async def test_four_chains_end_to_end(tally4: Tally) -> None:
    tally = tally4
    by_tps = await _night(tally)
    # Receipts name the chain the TPS hashes to, for every version.
    for tps, replies in by_tps.items():
        assert {r.receipt.chain for r in replies} == {oracle.chain_of(tps, K)}, tps
    rows = await tally.db.fetch("SELECT * FROM tally.submission ORDER BY chain, chain_position")
    assert len(rows) == 2 * len(by_tps)
    assert {r["chain"] for r in rows} == set(range(K)), "24 TPS spread over all 4 chains"
    # Each chain gapless from 1, each link the documented version-3 encoding, each head its last link.
    heads = await _heads(tally)
    assert sorted(heads) == list(range(K))
    for c in range(K):
        mine = [r for r in rows if r["chain"] == c]
        assert [r["chain_position"] for r in mine] == list(range(1, len(mine) + 1))
        assert all(r["chain"] == oracle.chain_of(r["tps"], K) for r in mine)
        previous = oracle.GENESIS
        for row in mine:
            previous = oracle.link(previous, row, K)
            assert (row["chain_version"], bytes(row["chain_hash"])) == (3, previous)
        assert heads[c] == (len(mine), previous)
    # Every head is handed out, signed over its chain and K.
    reply = await tally.stub.GetChainHead(tally_pb2.GetChainHeadRequest())
    assert [(h.chain, h.chains) for h in reply.chain_heads] == [(c, K) for c in range(K)]
    for h in reply.chain_heads:
        published = {"position": h.position, "hash": h.hash, "key_id": h.key_id, "signature": h.signature.hex()}
        assert (h.position, bytes.fromhex(h.hash)) == heads[h.chain]
        assert oracle.head_verifies(CHAIN_KEY.public_key, {**published, "chain": h.chain, "chains": K})
        assert not oracle.head_verifies(CHAIN_KEY.public_key, {**published, "chain": (h.chain + 1) % K, "chains": K})
    assert reply.chain_head == reply.chain_heads[0]
    # The audit recomputes all four.
    report = await verify_chain(tally.db)
    assert report.ok, report.problems
    assert report.chains == K and report.records == len(rows)
    assert report.heads == {c: (p, h.hex()) for c, (p, h) in heads.items()}


async def _truncate(db: asyncpg.Connection, chain_no: int) -> None:
    """Drop the last record of one chain (and what names it), as an attacker with the database would."""
    victim = await db.fetchval(
        "SELECT id FROM tally.submission WHERE chain = $1 ORDER BY chain_position DESC LIMIT 1", chain_no
    )
    await db.execute("DELETE FROM tally.outbox WHERE submission_id = $1", victim)
    await db.execute("DELETE FROM tally.current WHERE submission_id = $1", victim)
    await db.execute("DELETE FROM tally.submission WHERE id = $1", victim)


async def test_truncating_one_chain_is_detected(tally4: Tally) -> None:
    tally = tally4
    await _night(tally, stations=12)
    heads = await _heads(tally)
    victim = max(heads, key=lambda c: heads[c][0])
    published = {(c, p): h for c, (p, h) in heads.items()}
    await _truncate(tally.db, victim)

    report = await verify_chain(tally.db)
    assert not report.ok
    assert any(
        f"chain {victim}'s head says {heads[victim][0]} records, chain {victim} has" in p for p in report.problems
    ), report.problems

    # Head row reset to match: consistent on its own, but no longer reaching the published head.
    kept = await tally.db.fetchrow(
        "SELECT chain_position, chain_hash FROM tally.submission WHERE chain = $1 ORDER BY chain_position DESC LIMIT 1",
        victim,
    )
    await tally.db.execute(
        "UPDATE tally.chain_head SET position = $1, hash = $2 WHERE chain = $3",
        kept["chain_position"],
        kept["chain_hash"],
        victim,
    )
    assert (await verify_chain(tally.db)).ok
    report = await verify_chain(tally.db, published=published)
    assert not report.ok
    assert [p for p in report.problems if "records were deleted since" in p] == [
        f"a head of chain {victim} at position {heads[victim][0]} ({heads[victim][1].hex()}) was published, "
        f"but chain {victim} has {heads[victim][0] - 1} records: records were deleted since"
    ]


async def test_a_row_moved_to_another_chain_is_detected(tally4: Tally) -> None:
    tally = tally4
    await _night(tally, stations=8)
    row = await tally.db.fetchrow("SELECT id, chain FROM tally.submission ORDER BY chain, chain_position LIMIT 1")
    await tally.db.execute(
        "UPDATE tally.submission SET chain = $1, chain_position = 1000 WHERE id = $2", (row["chain"] + 1) % K, row["id"]
    )
    problems = (await verify_chain(tally.db)).problems
    assert any("but its TPS belongs in chain" in p for p in problems), problems


async def test_the_number_of_chains_is_fixed_once_a_form_is_stored(db_url: str, db: asyncpg.Connection) -> None:
    # Before any form, a restart with another K re-initialises the heads.
    first = await start_tally(db_url, db, with_tally(BASE_SETTINGS, chains=K))
    await first.close()
    second = await start_tally(db_url, db, with_tally(BASE_SETTINGS, chains=2))
    assert sorted(await db.fetchval("SELECT array_agg(chain) FROM tally.chain_head")) == [0, 1]
    await _night(second, stations=2)
    await second.close()
    with pytest.raises(SettingError) as refused:
        await start_tally(db_url, db, with_tally(BASE_SETTINGS, chains=K))
    assert "SUARA_TALLY_CHAINS" in str(refused.value) and "split into 2 chain(s)" in str(refused.value)
    again = await start_tally(db_url, db, with_tally(BASE_SETTINGS, chains=2))
    await again.close()
