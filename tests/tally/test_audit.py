"""The tamper-evident chain: it verifies, and any rewrite of a stored record is found."""

from __future__ import annotations

import asyncpg

from services.tally.audit import verify_chain
from tests.support.factories import consistent_form, signed
from tests.support.tally import Tally


async def _fill(tally: Tally, n: int) -> None:
    for _ in range(n):
        st = await tally.station()
        for version in (1, 2):
            await tally.stub.Submit(signed(st.key, consistent_form(st.tps, "ppwp", tally.contests["ppwp"], version)))


async def test_chain_verifies_and_head_matches(tally: Tally) -> None:
    await _fill(tally, 5)
    report = await verify_chain(tally.db)
    assert report.ok, report.problems
    assert report.records == 10
    head = await tally.db.fetchrow("SELECT position, hash FROM tally.chain_head")
    assert (head["position"], bytes(head["hash"]).hex()) == (10, report.head_hash)


async def test_rewritten_numbers_are_detected(tally: Tally) -> None:
    await _fill(tally, 3)
    victim = await tally.db.fetchrow("SELECT id, payload FROM tally.submission WHERE chain_position = 3")
    forged = bytearray(victim["payload"])
    forged[-1] ^= 1
    await tally.db.execute("UPDATE tally.submission SET payload = $1 WHERE id = $2", bytes(forged), victim["id"])
    report = await verify_chain(tally.db)
    assert not report.ok
    assert any("position 3" in p and "SHA-256" in p for p in report.problems)


async def test_a_dropped_record_is_detected(tally: Tally) -> None:
    await _fill(tally, 3)
    await tally.db.execute(
        "DELETE FROM tally.outbox WHERE submission_id IN (SELECT id FROM tally.submission WHERE chain_position = 2)"
    )
    victim = await tally.db.fetchval("SELECT id FROM tally.submission WHERE chain_position = 2")
    await tally.db.execute("DELETE FROM tally.current WHERE submission_id = $1", victim)
    await tally.db.execute("DELETE FROM tally.submission WHERE id = $1", victim)
    report = await verify_chain(tally.db)
    assert not report.ok
    assert any("gap" in p for p in report.problems)


async def test_an_altered_outcome_is_detected(tally: Tally, db: asyncpg.Connection) -> None:
    await _fill(tally, 2)
    await db.execute("UPDATE tally.submission SET outcome = 'QUARANTINED' WHERE chain_position = 4")
    report = await verify_chain(db)
    assert any("position 4" in p and "link hash" in p for p in report.problems)
