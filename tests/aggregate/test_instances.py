"""Several aggregate instances on one database, reached through one multi-address channel.

Aggregate runs active-active: every instance serves, their transactions meet only in PostgreSQL (the
head row lock orders appliers and change sequences; see services/aggregate/rollup.py). Exactness of
two instances applying at once is tests/aggregate/test_histories_property.py; here, what a client
sees: calls spread over the instances answering SERVING, none lands on one that says NOT_SERVING or
is gone, and a follower of `Changes` reading through either never misses a change written by both.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest

from services.aggregate.queries import QUERIES
from services.aggregate.server import AggregateApp
from suara.client.aggregate_stub import aggregate_stub
from suara.v1 import aggregate_pb2, aggregate_pb2_grpc
from tests.crash.rig import ApplyCounter
from tests.support.aggregate import BASE_SETTINGS, apply, start_aggregate, update
from tests.support.databases import as_service
from tests.support.oracles.aggregate import Oracle, Registry, stored_rows
from tests.support.pki import suite_pki
from tests.support.processes import running, suara_env
from tests.support.waiting import CHANNEL_OPTIONS, poll_until


@pytest.fixture
async def two(db_url: str) -> AsyncIterator[list[tuple[AggregateApp, ApplyCounter]]]:
    """Two aggregate instances on the test's database, each counting the ApplyUpdates calls it serves."""
    started: list[tuple[AggregateApp, ApplyCounter]] = []
    try:
        for _ in range(2):
            counter = ApplyCounter()
            app = await AggregateApp.create(BASE_SETTINGS, as_service(db_url, "aggregate"), interceptors=[counter])
            await app.start()
            started.append((app, counter))
        yield started
    finally:
        for app, _ in started:
            await app.stop(0.5)


def both(apps: list[tuple[AggregateApp, ApplyCounter]]) -> str:
    return ",".join(f"127.0.0.1:{app.internal_port}" for app, _ in apps)


async def apply_one(
    stub: aggregate_pb2_grpc.AggregateServiceAsyncStub, oracle: Oracle, u: aggregate_pb2.TpsUpdate, within_s: float = 10
) -> None:
    reply = await stub.ApplyUpdates(aggregate_pb2.ApplyUpdatesRequest(updates=[u]), timeout=within_s)
    got = [aggregate_pb2.UpdateOutcome.Name(o).removeprefix("UPDATE_OUTCOME_") for o in reply.outcomes]
    assert got == [oracle.send(u)]


async def test_calls_go_to_every_serving_instance_and_never_to_one_not_serving_or_gone(
    db: asyncpg.Connection, two: list[tuple[AggregateApp, ApplyCounter]]
) -> None:
    (a, at_a), (b, at_b) = two
    registry = await Registry.read(db)
    oracle = Oracle(registry)
    updates = iter(update(registry, tps, version=v) for v in (1, 2, 3, 4) for tps in registry.tps[:30])
    pki = suite_pki()
    async with pki.channel(both(two), pki.credential("test-writer", "writer"), options=CHANNEL_OPTIONS) as channel:
        stub = aggregate_stub(channel)
        for _ in range(20):
            await apply_one(stub, oracle, next(updates))
        assert at_a.calls > 0 and at_b.calls > 0 and at_a.calls + at_b.calls == 20  # both serve

        await a.server.set_serving(False)  # as a stopping instance does first: health NOT_SERVING

        async def only_b_now() -> bool:  # the channel's health watch on `a` sees it within moments
            before = at_b.calls
            await apply_one(stub, oracle, next(updates))
            return at_b.calls > before

        await poll_until(only_b_now, "calls going to the instance still SERVING")
        a_calls = at_a.calls
        for _ in range(20):
            await apply_one(stub, oracle, next(updates))
        assert at_a.calls == a_calls  # not one call to the instance that said NOT_SERVING

        await a.stop(0)  # gone altogether: still no failed call
        for _ in range(10):
            await apply_one(stub, oracle, next(updates))
        assert await stored_rows(db, registry) == oracle.rows()

        await b.server.set_serving(False)  # none left: UNAVAILABLE, as for one address that is down
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            for _ in range(50):  # the health watch on `b` takes effect within moments
                await stub.ApplyUpdates(aggregate_pb2.ApplyUpdatesRequest(updates=[next(updates)]), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_follower_of_changes_misses_nothing_two_instances_write(
    db: asyncpg.Connection, two: list[tuple[AggregateApp, ApplyCounter]]
) -> None:
    """Two writers, one per instance, and a follower paging `Changes(since)` through both at once: the
    change sequence commits in order whichever instance took it, so paging by the last sequence seen
    collects every change row exactly once."""
    registry = await Registry.read(db)
    rng = random.Random(20261207)
    pki = suite_pki()
    writer, reader = pki.credential("test-writer", "writer"), pki.credential("test-reader", "reader")
    channels = [pki.channel(f"127.0.0.1:{app.internal_port}", writer) for app, _ in two]
    follower_channel = pki.channel(both(two), reader, options=CHANNEL_OPTIONS)
    done = asyncio.Event()
    seen: list[tuple[int, str, str]] = []
    try:

        async def write(stub: aggregate_pb2_grpc.AggregateServiceAsyncStub, seed: int) -> None:
            mine = random.Random(seed)
            for _ in range(40):
                batch = [
                    update(registry, mine.choice(registry.tps), contest, version=mine.randint(1, 5))
                    for contest in ("ppwp", "pdpr")
                    for _ in range(mine.randint(1, 6))
                ]
                await stub.ApplyUpdates(aggregate_pb2.ApplyUpdatesRequest(updates=batch), timeout=10)

        async def follow() -> None:
            stub = aggregate_stub(follower_channel)
            since = 0
            while True:
                finished = done.is_set()  # before the read: a read after the last write ends it
                reply = await stub.Changes(aggregate_pb2.ChangesRequest(since=since, limit=7), timeout=10)
                for c in reply.changes:
                    assert c.sequence > since
                    seen.append((c.sequence, c.contest, c.area))
                if reply.changes:
                    since = reply.changes[-1].sequence
                elif finished and since == reply.sequence:
                    return
                else:
                    await asyncio.sleep(0)  # let the writers on: a follower never waits for its own reads

        following = asyncio.create_task(follow())
        await asyncio.gather(*(write(aggregate_stub(ch), rng.randint(0, 1 << 30)) for ch in channels))
        done.set()
        await asyncio.wait_for(following, 30)
    finally:
        for ch in [*channels, follower_channel]:
            await ch.close()
    stored = [
        (r["sequence"], r["contest"], r["area"])
        for r in await db.fetch("SELECT sequence, contest, area FROM aggregate.change ORDER BY 1, 2, 3")
    ]
    assert len(seen) == len(set(seen))  # nothing twice
    assert sorted(seen) == stored  # nothing missed
    assert [counter.calls for _, counter in two] == [40, 40]  # both instances wrote all along


async def test_an_instance_that_vanished_mid_batch_holds_the_head_row_seconds_not_hours(
    db: asyncpg.Connection, two: list[tuple[AggregateApp, ApplyCounter]]
) -> None:
    """What a host dying mid-batch leaves behind (no FIN reaches PostgreSQL): one of its sessions inside
    an apply transaction, holding the head row, silent. The other instance's batch waits for the row,
    and gets it once PostgreSQL ends the silent transaction (idle_in_transaction_session_timeout)."""
    (a, _), (b, _) = two
    registry = await Registry.read(db)
    oracle = Oracle(registry)
    silent = await a.db.pool.acquire()
    try:
        transaction = silent.transaction()
        await transaction.start()
        await silent.execute(QUERIES.custom_plans)  # as the applier starts every batch
        await silent.fetchrow(QUERIES.lock_head)
        pki = suite_pki()
        async with pki.channel(f"127.0.0.1:{b.internal_port}", pki.credential("test-writer", "writer")) as channel:
            started = time.monotonic()
            await apply_one(aggregate_stub(channel), oracle, update(registry, registry.tps[0]), within_s=30)
            waited = time.monotonic() - started
        assert 9.0 <= waited < 20.0, waited  # it did wait for the row, and for the timeout only
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
            await silent.fetchval("SELECT 1")  # the server ended the silent session
        assert await stored_rows(db, registry) == oracle.rows()
    finally:
        with contextlib.suppress(Exception):
            await a.db.pool.release(silent)


async def test_forward_feeds_whichever_national_instance_is_left(
    db_url: str, db: asyncpg.Connection, other_db_url: str, tmp_path: Path
) -> None:
    """`suara aggregate forward --to N1,N2`: the province's rows reach the nation through both national
    instances, and through the one left after the other stops."""
    p = await start_aggregate(db_url, db)
    n_db = await asyncpg.connect(other_db_url)
    nationals = [await start_aggregate(other_db_url, n_db) for _ in range(2)]
    try:
        registry = await Registry.read(db)
        oracle = Oracle(registry)
        province = sorted({t[:2] for t in registry.tps})[0]
        theirs = [t for t in registry.tps if t.startswith(province)]
        await apply(p, oracle, [update(registry, t) for t in theirs[:3]])
        pki = suite_pki()
        args = (
            "aggregate", "forward",
            "--from", f"127.0.0.1:{p.app.internal_port}",
            "--to", ",".join(f"127.0.0.1:{n.app.internal_port}" for n in nationals),
            "--area", province,
            "--contest", "ppwp",
            "--name", "prov-two",
            "--credential", str(pki.bundle("test-federation", "federation")),
            "--reader-credential", str(pki.bundle("test-reader", "reader")),
        )  # fmt: skip

        async def nation_holds(reported: int) -> bool:
            row = await n_db.fetchrow(
                "SELECT tps_reported FROM aggregate.area_total WHERE contest = 'ppwp' AND area = $1", province
            )
            return row is not None and row["tps_reported"] == reported

        async with running(*args, env=suara_env(DATABASE_URL=db_url), cwd=tmp_path) as child:
            await poll_until(lambda: nation_holds(3), "the province's row at the nation", check=child.assert_alive)
            await nationals[0].close()  # NOT_SERVING, then gone
            await apply(p, oracle, [update(registry, t) for t in theirs[3:6]])
            await poll_until(
                lambda: nation_holds(6), "the newer row, through the instance left", check=child.assert_alive
            )
            assert await child.terminate(within_s=10) == 0
        want = oracle.rows()[("ppwp", province)]
        got = (await nationals[1].stub.GetArea(aggregate_pb2.GetAreaRequest(contest="ppwp", area=province))).view.area
        assert (dict(got.totals.votes), got.tps_reported) == (want.votes, want.tps_reported)
    finally:
        await nationals[1].close()
        await p.close()
        await n_db.close()
