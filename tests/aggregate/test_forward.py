"""`suara aggregate forward`: a province instance P feeds a national instance N continuously, exact
under the failures of the network between them and of the forwarder itself.

The oracle is tests.support.oracles.aggregate: the truth computed in plain Python from every update
each instance was sent, never from either instance's own sums.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from services.aggregate.forward import Forwarder
from suara.v1 import aggregate_pb2, aggregate_pb2_grpc
from tests.aggregate.test_federation import _check
from tests.support.aggregate import Aggregate, apply, start_aggregate, update
from tests.support.oracles.aggregate import Oracle, Registry
from tests.support.pki import suite_pki
from tests.support.processes import run_suara, running, suara_env
from tests.support.waiting import poll_until

CONTESTS = ("ppwp", "pdpr")


class Flaky:
    """The network between P's forwarder and N: `down` calls fail UNAVAILABLE before reaching N, `lost`
    calls reach N and apply, and their reply is lost on the way back."""

    def __init__(self, stub: aggregate_pb2_grpc.AggregateServiceAsyncStub) -> None:
        self.stub = stub
        self.down = 0
        self.lost = 0
        self.calls = 0

    async def ApplyAreaUpdates(self, request: aggregate_pb2.ApplyAreaUpdatesRequest, **kwargs: Any) -> Any:
        self.calls += 1
        if self.down:
            self.down -= 1
            raise _unavailable("N unreachable")
        reply = await self.stub.ApplyAreaUpdates(request, **kwargs)
        if self.lost:
            self.lost -= 1
            raise _unavailable("reply lost")
        return reply


def _unavailable(why: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), why)


@pytest.fixture
async def national(other_db_url: str) -> AsyncIterator[Aggregate]:
    n_db = await asyncpg.connect(other_db_url)
    n = await start_aggregate(other_db_url, n_db)
    yield n
    await n.close()
    await n_db.close()


async def _fed_rows_match(p: Aggregate, n: Aggregate, fed: list[str]) -> bool:
    """N holds, for each fed province, the row P has now (compared as the API shows both)."""
    for contest in CONTESTS:
        request = aggregate_pb2.GetAreasRequest(contest=contest, areas=fed)
        mine, theirs = await p.stub.GetAreas(request), await n.stub.GetAreas(request)
        for a, b in zip(mine.views, theirs.views, strict=True):
            if (a.area.totals, a.area.tps_reported, a.area.tps_quarantined) != (
                b.area.totals,
                b.area.tps_reported,
                b.area.tps_quarantined,
            ):
                return False
    return True


async def test_a_province_feeds_the_nation_exactly_through_outages_lost_replies_and_restarts(
    aggregate: Aggregate, national: Aggregate, record_property: Callable[[str, object], None]
) -> None:
    p, n = aggregate, national
    registry = await Registry.read(p.db)
    provinces = sorted({t[:2] for t in registry.tps})
    fed, own = provinces[:2], provinces[2:]
    fed_tps = [t for t in registry.tps if t[:2] in fed]
    own_tps = [t for t in registry.tps if t[:2] in own]
    oracle, p_oracle, n_oracle = Oracle(registry), Oracle(registry), Oracle(registry)
    await apply(n, n_oracle, [update(registry, t) for t in own_tps[::4]])
    for t in own_tps[::4]:
        oracle.send(update(registry, t))

    network = Flaky(n.stub)
    stop = asyncio.Event()

    def forwarder() -> Forwarder:
        return Forwarder(p.stub, network, name="P", areas=fed, contests=CONTESTS, interval_s=0.05)  # type: ignore[arg-type]

    first = forwarder()
    running = asyncio.create_task(first.run(stop))
    rounds = [fed_tps[0::3], fed_tps[1::3], fed_tps[2::3]]
    try:
        for i, tps in enumerate(rounds):
            if i == 1:
                network.down = 3  # N unreachable for three calls
            if i == 2:
                network.lost = 2  # applied at N, the replies lost: resent
            batch = [update(registry, t, c, version=i + 1) for t in tps for c in CONTESTS]
            await apply(p, p_oracle, batch)
            for u in batch:
                oracle.send(u)
            await poll_until(lambda: _fed_rows_match(p, n, fed), f"round {i + 1} forwarded")
        # A correction of one TPS, forwarded; then the forwarder restarts (state in memory only) and
        # sends every row again: all DUPLICATE.
        correction = [update(registry, fed_tps[0], "ppwp", version=9, quarantined=True)]
        await apply(p, p_oracle, correction)
        oracle.send(correction[0])
        await poll_until(lambda: _fed_rows_match(p, n, fed), "the correction forwarded")
        stop.set()
        await running
        head_before = await n.db.fetchval("SELECT sequence FROM aggregate.head")
        second = forwarder()
        resent = await second.step()
        assert resent == len(fed) * len(CONTESTS)
        assert second.stats.outcomes["duplicate"] == resent and second.stats.outcomes["applied"] == 0
        assert await n.db.fetchval("SELECT sequence FROM aggregate.head") == head_before  # nothing re-applied
    finally:
        stop.set()
        await running

    await _check(n.db, registry, oracle, fed, own)  # every level at N against the oracle: none counted twice
    assert first.stats.failures >= 3  # the outage and the lost replies were met, and ridden out
    assert first.stats.outcomes["refused"] == 0
    record_property(
        "figures",
        f"forward drill: {first.stats.sent} updates sent in {first.stats.rounds} rounds, "
        f"{first.stats.failures} failed calls retried, outcomes {first.stats.outcomes}; after restart "
        f"{second.stats.outcomes['duplicate']} DUPLICATE; N exact against the oracle at every level "
        "(0 lost, 0 counted twice)",
    )


async def test_an_update_the_receiver_refuses_is_logged_and_not_resent(
    aggregate: Aggregate, national: Aggregate
) -> None:
    """N's registry knows fewer TPS in the province than P claims (here: the update names more TPS than
    N has there) — refused alone, logged, and not sent again until P's row changes."""
    p, n = aggregate, national
    registry = await Registry.read(p.db)
    province = sorted({t[:2] for t in registry.tps})[0]
    await n.db.execute(  # N's registry loses a TPS of the province: P's tps_total no longer fits there
        "UPDATE aggregate.area_total SET tps_total = tps_total - 1 WHERE area = $1", province
    )
    await apply(p, Oracle(registry), [update(registry, t) for t in registry.tps if t.startswith(province)][:2])
    forwarder = Forwarder(p.stub, n.stub, name="P", areas=[province], contests=["ppwp"])
    assert await forwarder.step() == 1
    assert forwarder.stats.outcomes["refused"] == 1
    assert await forwarder.step() == 0  # not resent: the same numbers would be refused again


async def test_the_command_forwards_until_sigterm(aggregate: Aggregate, national: Aggregate, tmp_path: Path) -> None:
    p, n = aggregate, national
    registry = await Registry.read(p.db)
    province = sorted({t[:2] for t in registry.tps})[0]
    await apply(p, Oracle(registry), [update(registry, t) for t in registry.tps if t.startswith(province)][:3])
    pki = suite_pki()
    args = (
        "aggregate", "forward",
        "--from", f"127.0.0.1:{p.app.internal_port}",
        "--to", f"127.0.0.1:{n.app.internal_port}",
        "--area", province,
        "--contest", "ppwp",
        "--name", "prov-test",
        "--credential", str(pki.bundle("test-federation", "federation")),
        "--reader-credential", str(pki.bundle("test-reader", "reader")),
    )  # fmt: skip
    async with running(*args, env=suara_env(DATABASE_URL=p.db_url), cwd=tmp_path) as child:

        async def arrived() -> bool:
            return bool(await n.db.fetchval("SELECT count(*) FROM aggregate.area_feed WHERE source = 'prov-test'"))

        await poll_until(arrived, "the province row at N, from the command")
        request = aggregate_pb2.GetAreaRequest(contest="ppwp", area=province)
        mine, theirs = (await p.stub.GetArea(request)).view.area, (await n.stub.GetArea(request)).view.area
        assert (mine.totals, mine.tps_reported) == (theirs.totals, theirs.tps_reported)
        assert mine.tps_reported == 3
        assert await child.terminate(within_s=10) == 0
    assert "forwarded 1 updates" in child.log.text()


async def test_the_command_refuses_a_contest_it_does_not_know(tmp_path: Path, db_url: str) -> None:
    pki = suite_pki()
    done = await run_suara(
        "aggregate", "forward", "--to", "127.0.0.1:1", "--area", "31", "--contest", "nope",
        "--credential", str(pki.bundle("test-federation", "federation")),
        "--reader-credential", str(pki.bundle("test-reader", "reader")),
        env=suara_env(DATABASE_URL=db_url), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2 and "--contest nope" in done.stderr and "ppwp" in done.stderr
