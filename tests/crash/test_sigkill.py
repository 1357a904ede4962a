"""Crash safety (issue 3): aggregate and the relay killed with SIGKILL mid-delivery, again and again.

Everything is real: PostgreSQL, `suara aggregate serve` and `suara service relay`
as subprocesses, tally in-process. The kills land at seeded random moments while
batches are in flight; the processes come back on the same port (or, for the
relay, a standby takes over). At the end
every area at every level (aggregate.area_total, every contest) and every TPS's
stored version equal the oracle computed in plain Python from what tally
acknowledged: nothing lost, nothing counted twice.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable, Mapping, MutableMapping
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog

from cli.embedded import free_port
from services.aggregate.server import AggregateApp
from tests.crash.rig import DRILL_SETTINGS, AggregateProcess, ApplyCounter, Forms, RelayProcess, delivered, pending
from tests.support.aggregate import BASE_SETTINGS as AGGREGATE_SETTINGS
from tests.support.oracles.aggregate import Oracle, expected_versions, stored_rows, stored_versions
from tests.support.pki import suite_pki
from tests.support.tally import Tally, relaying, start_tally
from tests.support.waiting import WAIT_S, poll_until

pytestmark = pytest.mark.slow

SEED = 20260404
KILLS = 4
EXTRA_KILLS = 8  # more kills, only until one has cut a call in flight


async def writer_credential(db: asyncpg.Connection, path: Path) -> Path:
    """The relay's writer certificate (the suite's PKI; `path` is unused under TLS)."""
    return suite_pki().bundle("tally-relay", "writer")


async def assert_matches(db: asyncpg.Connection, oracle: Oracle) -> None:
    quarantined = {q for _, q in expected_versions(oracle).values()}
    assert quarantined == {False, True}, "the oracle should hold counted and quarantined TPS alike"
    assert await pending(db) == 0
    assert await stored_versions(db) == expected_versions(oracle)  # each TPS at its acknowledged version
    assert await stored_rows(db, oracle.registry) == oracle.rows()  # every area, every level, every contest


async def close_tally(tally: Tally | None) -> None:
    if tally is not None:
        await tally.channel.close()
        await tally.app.stop(0.5)


async def submit_until(forms: Forms, stop: asyncio.Event, rng: random.Random, minimum: int) -> None:
    """SubmitBatch rounds of random size until told to stop (and at least `minimum` rounds)."""
    rounds = 0
    while rounds < minimum or not stop.is_set():
        await forms.submit(rng.randint(20, 400))
        rounds += 1
        await asyncio.sleep(rng.uniform(0.0, 0.1))


async def kill_aggregate_while_delivering(
    aggregate: AggregateProcess, db: asyncpg.Connection, rng: random.Random, kills: int
) -> list[int]:
    """Kill aggregate `kills` times, each time after the relay delivered again since the restart; the
    rows pending at each kill (a batch in flight is among them)."""
    pending_at_kill = []
    for _ in range(kills):
        before = await delivered(db)
        await poll_until(partial(_grew, db, before), "delivering to the restarted aggregate")
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        await poll_until(lambda: _has_pending(db), "rows to deliver")  # a batch on its way, or about to be
        await asyncio.sleep(rng.uniform(0.0, 0.03))
        pending_at_kill.append(await pending(db))
        await aggregate.kill()
        await asyncio.sleep(rng.uniform(0.0, 0.3))  # down for a while: the relay retries meanwhile
        await aggregate.start()
    return pending_at_kill


def calls_broken_mid_flight(events: Iterable[Mapping[str, Any]]) -> int:
    """How many relay calls failed after reaching aggregate (stream reset or closed), not at connecting."""
    return sum(
        1
        for e in events
        if e.get("event") == "relay_call_failed" and not str(e.get("error", "")).startswith("failed to connect")
    )


async def _grew(db: asyncpg.Connection, before: int) -> bool:
    return await delivered(db) > before


async def _has_pending(db: asyncpg.Connection) -> bool:
    return await pending(db) > 0


async def test_aggregate_killed_mid_batch_repeatedly_loses_and_doubles_nothing(
    db_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    credential = await writer_credential(db, tmp_path / "relay.key.json")
    aggregate = AggregateProcess(db_url, free_port(), tmp_path)
    tally: Tally | None = None
    submitting: asyncio.Task[None] | None = None
    relay_log: list[MutableMapping[str, Any]] = []
    try:
        await aggregate.start()
        settings = relaying(DRILL_SETTINGS, credential, aggregate.address)
        tally = await start_tally(db_url, db, settings)
        relay = tally.app.relay
        assert relay is not None, "tally should relay when it has a writer credential"
        relay.backoff.cap_s = 0.5  # only to keep the test short: retry at most half a second apart
        forms = Forms(tally, rng)
        await forms.enroll(120)
        stop = asyncio.Event()
        with structlog.testing.capture_logs() as relay_log:  # the in-process relay's events
            submitting = asyncio.create_task(submit_until(forms, stop, rng, minimum=10))
            pending_at_kill = await kill_aggregate_while_delivering(aggregate, db, rng, KILLS)
            stop.set()
            await submitting
        await asyncio.wait_for(relay.wait_caught_up(), WAIT_S)

        assert aggregate.kills == KILLS
        assert any(pending_at_kill), pending_at_kill  # at least one kill landed with rows in flight
        # A kill cut an ApplyUpdates call in flight, not only refused new ones.
        assert calls_broken_mid_flight(relay_log) >= 1
        assert {"ACCEPTED", "QUARANTINED", "DUPLICATE", "SUPERSEDED"} <= forms.outcomes.keys(), forms.outcomes
        await assert_matches(db, await forms.oracle(db))
    finally:
        if submitting is not None:
            submitting.cancel()
            await asyncio.gather(submitting, return_exceptions=True)
        await close_tally(tally)
        await aggregate.close()


async def test_relay_killed_mid_backlog_repeatedly_loses_and_doubles_nothing(
    db_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    rng = random.Random(SEED + 1)
    credential = await writer_credential(db, tmp_path / "relay.key.json")
    counter = ApplyCounter()
    aggregate = await AggregateApp.create(AGGREGATE_SETTINGS, db_url, interceptors=[counter])
    await aggregate.start()
    tally: Tally | None = None
    relay = RelayProcess(db_url, f"127.0.0.1:{aggregate.internal_port}", credential, tmp_path, batch=100)
    try:
        tally = await start_tally(db_url, db, DRILL_SETTINGS)  # no relay of its own: the subprocess delivers
        assert tally.app.relay is None
        forms = Forms(tally, rng)
        await forms.enroll(300)
        while await tally.count("outbox") < 3000:
            await forms.submit(500)
        backlog = await tally.count("outbox")

        await relay.start()
        pending_at_kill = []
        for _ in range(KILLS):
            target = min(await delivered(db) + rng.randint(50, 500), backlog - 1)
            await poll_until(partial(_reached, db, target), f"{target} rows delivered", check=relay.assert_alive)
            await asyncio.sleep(rng.uniform(0.0, 0.05))
            pending_at_kill.append(await pending(db))
            await relay.kill()
            await relay.start()
        # A bounded poll: the relay is another process; its progress is visible only in the database.
        await poll_until(lambda: _drained(db), "drained", check=relay.assert_alive)

        assert relay.kills == KILLS
        assert all(pending_at_kill), pending_at_kill  # every kill landed with a backlog left
        # Some kill landed between sending a batch and marking it delivered: that batch was sent again.
        assert counter.updates > backlog, (counter.updates, backlog)
        await assert_matches(db, await forms.oracle(db))
    finally:
        await relay.close()
        await close_tally(tally)
        await aggregate.stop(0.5)


async def _reached(db: asyncpg.Connection, target: int) -> bool:
    return await delivered(db) >= target


async def _drained(db: asyncpg.Connection) -> bool:
    return await pending(db) == 0


async def test_two_relays_stay_exact_through_aggregate_kills_and_the_active_relay_dying(
    db_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    rng = random.Random(SEED + 2)
    credential = await writer_credential(db, tmp_path / "relay.key.json")
    aggregate = AggregateProcess(db_url, free_port(), tmp_path)
    relays = [RelayProcess(db_url, aggregate.address, credential, tmp_path, batch=200) for _ in range(2)]
    tally: Tally | None = None
    submitting: asyncio.Task[None] | None = None
    try:
        await aggregate.start()
        tally = await start_tally(db_url, db, DRILL_SETTINGS)  # no relay of its own: the two subprocesses deliver
        for relay in relays:
            await relay.start()
        forms = Forms(tally, rng)
        await forms.enroll(120)
        stop = asyncio.Event()
        submitting = asyncio.create_task(submit_until(forms, stop, rng, minimum=10))
        pending_at_kill = await kill_aggregate_while_delivering(aggregate, db, rng, KILLS - 1)

        def relay_events() -> list[Mapping[str, Any]]:
            return [e for relay in relays if relay.child is not None for e in relay.child.log.events()]

        # Where a kill lands is luck (a batch takes milliseconds): kill again, a bounded number of times,
        # until one has cut an ApplyUpdates call in flight, which is what this drill is for.
        for _ in range(EXTRA_KILLS):
            if calls_broken_mid_flight(relay_events()) >= 1:
                break
            pending_at_kill += await kill_aggregate_while_delivering(aggregate, db, rng, 1)
        events = relay_events()

        # Then the active relay dies too, with rows pending: the standby takes the lock and finishes.
        (active,) = [r for r in relays if r.child is not None and r.child.log.has_event("relay_active")]
        (standby,) = [r for r in relays if r is not active]
        await poll_until(lambda: _has_pending(db), "rows to deliver")
        await active.kill()
        stop.set()
        await submitting
        # A bounded poll: the relay is another process; its progress is visible only in the database.
        await poll_until(lambda: _drained(db), "drained", check=standby.assert_alive)

        assert KILLS - 1 <= aggregate.kills <= KILLS - 1 + EXTRA_KILLS
        assert any(pending_at_kill), pending_at_kill
        assert calls_broken_mid_flight(events) >= 1  # a kill cut an ApplyUpdates call, not only refused new ones
        assert standby.child is not None and standby.child.log.has_event("relay_active")  # it took over
        await assert_matches(db, await forms.oracle(db))
    finally:
        if submitting is not None:
            submitting.cancel()
            await asyncio.gather(submitting, return_exceptions=True)
        for relay in relays:
            await relay.close()
        await close_tally(tally)
        await aggregate.close()
