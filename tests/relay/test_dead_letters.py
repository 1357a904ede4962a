"""A bad row never holds up the outbox: refused or failing rows are set aside (the dead letters), the
rest is delivered, and an operator hands them back once repaired."""

from __future__ import annotations

import collections

import grpc

from services.tally.dead_letters import dead_letters, redeliver
from services.tally.relay import DEAD_LETTER_STORM, LONE_ATTEMPTS
from tests.relay.rig import Key, Rig
from tests.support.waiting import poll_until


def _lone(keys: list[Key]) -> Key:
    """A key in the middle of `keys` whose TPS has no other form (so a TPS stands for one row)."""
    once = collections.Counter(k[0] for k in keys)
    return next(k for k in keys[len(keys) // 2 :] if once[k[0]] == 1)


async def _alarms(rig: Rig) -> list[tuple[str, str, int]]:
    rows = await rig.db.fetch("SELECT tps, contest, version FROM tally.alarm WHERE kind = 'dead_letter' ORDER BY id")
    return [(r["tps"], r["contest"], r["version"]) for r in rows]


async def test_a_batch_failing_for_one_row_is_halved_down_to_it_and_the_rest_delivered(rig: Rig) -> None:
    keys = await rig.submit(300, quarantine_every=0)
    poison = _lone(keys)
    rig.fake.fail_with_tps = {poison[0]}
    relay = rig.relay(batch=64)
    await rig.drained(relay)

    assert sorted(rig.fake.delivered_keys()) == sorted(k for k in keys if k != poison)
    dead = await dead_letters(rig.db)
    assert [(d.tps, d.contest, d.version) for d in dead] == [poison]
    assert "INTERNAL" in dead[0].reason and "numeric value out of range" in dead[0].reason
    assert await _alarms(rig) == [poison]
    # Halving finds one row among 64 in about log2(64) failed calls, plus its lone attempts.
    failed_calls = rig.fake.attempts - len(rig.fake.confirmed)
    assert failed_calls <= 2 * 6 + LONE_ATTEMPTS, failed_calls

    # Repaired (here: aggregate takes it now), the operator hands it back; it is delivered.
    rig.fake.fail_with_tps = set()
    assert await redeliver(rig.db, [dead[0].outbox_id]) == [dead[0].outbox_id]
    await rig.drained(relay)
    assert rig.fake.delivered_keys().count(poison) == 1
    assert await dead_letters(rig.db) == []
    assert [d.redelivered_at is not None for d in await dead_letters(rig.db, include_redelivered=True)] == [True]


async def test_a_refused_row_is_set_aside_with_aggregates_reason_and_its_batch_delivered(rig: Rig) -> None:
    keys = await rig.submit(50, quarantine_every=0)
    poison = _lone(keys)
    rig.fake.refuse = {poison[0]}
    relay = rig.relay(batch=1000)
    await rig.drained(relay)

    assert rig.fake.attempts == 1, "a refusal is an answer: nothing is sent again"
    assert sorted(rig.fake.delivered_keys()) == sorted(k for k in keys if k != poison)
    dead = await dead_letters(rig.db)
    assert [(d.tps, d.version, d.reason, d.fields) for d in dead] == [
        (
            poison[0],
            poison[2],
            "more than this TPS can count (fake)",
            (f"updates[{keys.index(poison)}].totals.suara_sah",),
        )
    ]
    assert await _alarms(rig) == [poison]
    assert relay.dead_lettered == 1


async def test_a_row_that_cannot_be_encoded_is_set_aside(rig: Rig) -> None:
    keys = await rig.submit(20, quarantine_every=0)
    poison = _lone(keys)
    await rig.db.execute(  # a row corrupted in the database: a count no int64 holds
        "UPDATE tally.outbox SET counts = jsonb_set(counts, '{suara_sah}', '99999999999999999999999')"
        " WHERE tps = $1 AND version = $2",
        poison[0],
        poison[2],
    )
    relay = rig.relay(batch=1000)
    await rig.drained(relay)
    assert sorted(rig.fake.delivered_keys()) == sorted(k for k in keys if k != poison)
    assert [(d.tps, d.version) for d in await dead_letters(rig.db)] == [(poison[0], poison[2])]


async def test_when_aggregate_fails_every_call_the_relay_stops_setting_rows_aside(rig: Rig) -> None:
    keys = await rig.submit(40, quarantine_every=0)
    rig.fake.fail_every_call = grpc.StatusCode.INTERNAL
    relay = rig.relay(batch=4)

    async def stuck() -> bool:  # at the bound, and well past it in calls
        return relay.dead_lettered >= DEAD_LETTER_STORM and rig.fake.attempts > 12 * DEAD_LETTER_STORM

    await poll_until(stuck, "the relay stopping at DEAD_LETTER_STORM rows set aside")
    assert relay.dead_lettered == DEAD_LETTER_STORM, "aggregate is at fault, not every row"
    assert await rig.pending() == len(keys) - DEAD_LETTER_STORM

    rig.fake.fail_every_call = None  # aggregate repaired: the rest drains by itself
    await rig.drained(relay)
    assert len(rig.fake.delivered_keys()) == len(keys) - DEAD_LETTER_STORM
    assert await redeliver(rig.db, None) == sorted(
        d.outbox_id for d in await dead_letters(rig.db, include_redelivered=True)
    )
    await rig.drained(relay)
    assert sorted(rig.fake.delivered_keys()) == sorted(keys)
