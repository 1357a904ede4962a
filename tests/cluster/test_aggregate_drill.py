"""Issue 15, drill 3: an aggregate instance dies under load; the other carries on; the site stays exact.

Real engines: PostgreSQL, two `suara aggregate serve` processes on the one database, an in-process
tally whose relay delivers to both through one multi-address SUARA_AGGREGATE_ADDRESS, and an
in-process publish (`PublishApp`, its own loop and retries) reading aggregate through both. The load
is `suara loadtest`'s own run (devices, faults, settling, verification), and its oracle is the one
held to: every published totals file and sampled TPS file must say what the devices were
acknowledged. Mid-night, one aggregate is SIGKILLed; the relay's and publish's calls go to the one
left (gRPC round_robin with health checks: the killed instance's connection closes, and it gets no
more calls); a call the kill cuts fails UNAVAILABLE and is resent, which applying absorbs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, MutableMapping
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog

from cli.embedded import free_port
from loadtest.config import Config
from loadtest.run import run_loadtest
from services.publish.server import PublishApp
from services.publish.sinks.local import LocalSink
from suara.runtime.settings import LogSettings, PeerSettings, PublishSettings, Settings, SiteSettings
from tests.crash.rig import AggregateProcess, delivered, pending
from tests.support.pki import suite_pki, with_tls
from tests.support.publish import scratch_site
from tests.support.tally import BASE_SETTINGS as TALLY_SETTINGS
from tests.support.tally import Tally, relaying, start_tally
from tests.support.waiting import WAIT_S, poll_until

pytestmark = pytest.mark.slow

KILL_AFTER_ROWS = 150  # delivered before the kill: the night is well under way


@contextlib.asynccontextmanager
async def aggregates(db_url: str, tmp_path: Path) -> AsyncIterator[list[AggregateProcess]]:
    procs = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            procs.append(AggregateProcess(db_url, free_port(), tmp_path / name))
            await procs[-1].start()
        yield procs
    finally:
        for p in procs:
            await p.close()


@contextlib.asynccontextmanager
async def publishing(db_url: str, addresses: str, tally: Tally, site: Path, tmp_path: Path) -> AsyncIterator[None]:
    settings = with_tls(
        Settings(
            publish=PublishSettings(
                port=0, credential=str(suite_pki().bundle("publish-drill", "reader")), interval_s=0.2
            ),
            site=SiteSettings(dir=site),
            peers=PeerSettings(aggregate=addresses, tally=f"127.0.0.1:{tally.app.internal_port}"),
            log=LogSettings(format="console"),
            data_dir=tmp_path / "publish-state",
        )
    )
    app = await PublishApp.create(settings, db_url, sink=LocalSink(site))
    await app.start()
    try:
        yield
    finally:
        await app.stop(0.5)


def load_config(tally: Tally, site: Path) -> Config:
    """The load test's small night, as tests/loadtest runs it against the in-process pipeline."""
    pki = suite_pki()
    return Config(
        target=f"127.0.0.1:{tally.app.port}",
        admin_target=f"127.0.0.1:{tally.app.internal_port}",
        tls=pki.client_tls(),
        admin_tls=pki.client_tls(pki.credential("loadtest-admin", "admin")),
        admin_token="",
        site=str(site),
        scale=0.08,
        concurrency=8,
        seed=15,
        sample_interval_s=0.2,
        settle_s=1.0,
        settle_timeout_s=120.0,
        snapshot_timeout_s=120.0,
    )


async def test_an_aggregate_killed_mid_night_the_other_carries_on_exact(
    db_url: str, db: asyncpg.Connection, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    relay_log: list[MutableMapping[str, Any]] = []
    async with aggregates(db_url, tmp_path) as (a, b):
        addresses = f"{a.address},{b.address}"
        settings = relaying(TALLY_SETTINGS, suite_pki().bundle("relay-drill", "writer"), addresses)
        tally = await start_tally(db_url, db, settings)
        assert tally.app.relay is not None and tally.app.relay.aggregate_address == addresses
        tally.app.relay.backoff.cap_s = 0.5  # as a device's SDK: resend soon after a failure
        try:
            with (
                scratch_site("suara-drill3-", tmp_path) as site,
                structlog.testing.capture_logs() as relay_log,
            ):
                async with publishing(db_url, addresses, tally, site, tmp_path):
                    night = asyncio.create_task(run_loadtest(load_config(tally, site)))
                    await poll_until(
                        lambda: _delivered_at_least(db, KILL_AFTER_ROWS), "the night under way", within_s=120
                    )
                    assert not night.done()
                    killed_at: datetime = await db.fetchval("SELECT clock_timestamp()")
                    await a.kill()  # SIGKILL: its connections and its open transaction simply die
                    report = await asyncio.wait_for(night, 600)
                    await asyncio.wait_for(tally.app.relay.wait_caught_up(), WAIT_S)
        finally:
            await tally.channel.close()
            await tally.app.stop(0.5)
        assert b.child is not None and b.child.alive  # the one left served to the end
        figures = await _figures(db, report, killed_at, relay_log)
    record_property("figures", figures["line"])
    v = report["verification"]
    assert v["exact"], v["mismatches"]  # published totals and TPS files = the load test's oracle
    assert figures["acknowledged_after_kill"] > 0  # the kill landed mid-night: forms kept coming
    assert figures["delivered_after_kill"] > 0  # and went through the instance left
    assert figures["lost"] == 0
    assert figures["twice"] == 0
    assert figures["counted_vs_oracle"] == {c: 0 for c in report["oracle"]}
    assert await pending(db) == 0


async def _delivered_at_least(db: asyncpg.Connection, n: int) -> bool:
    return await delivered(db) >= n


async def _figures(
    db: asyncpg.Connection, report: dict[str, Any], killed_at: datetime, relay_log: list[MutableMapping[str, Any]]
) -> dict[str, Any]:
    # Lost: a (TPS, contest) whose current version in tally (what it acknowledged) aggregate does not hold.
    lost = await db.fetchval(
        "SELECT count(*) FROM tally.current c LEFT JOIN aggregate.tps_result r USING (tps, contest)"
        " WHERE r.version IS DISTINCT FROM c.version"
    )
    # Twice: the nation counting more TPS than aggregate holds forms for (a form added twice).
    nation = {
        r["contest"]: r
        for r in await db.fetch(
            "SELECT contest, tps_reported, tps_quarantined FROM aggregate.area_total WHERE area = ''"
        )
    }
    held = dict(await db.fetch("SELECT contest, count(*) FROM aggregate.tps_result GROUP BY contest"))
    twice = sum(
        max(0, n["tps_reported"] + n["tps_quarantined"] - held.get(contest, 0)) for contest, n in nation.items()
    )
    counted_vs_oracle = {c: nation[c]["tps_reported"] - o["counted"] for c, o in report["oracle"].items()}
    # Unavailable: from the kill to the first delivery after it (the database's clock: delivered_at is
    # set as each batch is settled). Worst latency: the longest a form waited in the outbox for aggregate,
    # before the kill and after it.
    first_after = await db.fetchval("SELECT min(delivered_at) FROM tally.outbox WHERE delivered_at >= $1", killed_at)
    first_after_s = (first_after - killed_at).total_seconds() if first_after is not None else float("inf")
    waits = {
        r["after"]: (r["worst"].total_seconds(), r["n"])
        for r in await db.fetch(
            "SELECT delivered_at >= $1 AS after, max(delivered_at - created_at) AS worst, count(*) AS n"
            " FROM tally.outbox GROUP BY 1",
            killed_at,
        )
    }
    (worst_before_s, _), (worst_after_s, delivered_after) = waits[False], waits[True]
    acknowledged_after = await db.fetchval("SELECT count(*) FROM tally.submission WHERE received_at > $1", killed_at)
    failed_calls = [e for e in relay_log if e.get("event") == "relay_call_failed"]
    publish_failures = [e for e in relay_log if e.get("event") == "publish_cycle_failed"]
    v = report["verification"]
    line = (
        f"aggregate drill (one of two SIGKILLed mid-night): {acknowledged_after} forms acknowledged after the kill, "
        f"{lost} acknowledged lost, {twice} counted twice; published totals vs the load test's oracle: "
        f"{'exact' if v['exact'] else 'NOT exact'} ({v['areas_checked']} areas, {v['tps_checked']} TPS files, "
        f"{v['mismatch_count']} mismatches); unavailable: delivery resumed {first_after_s:.2f} s after the kill; "
        f"relay calls failed {len(failed_calls)}, publish cycles failed {len(publish_failures)}; worst wait in "
        f"the outbox {worst_before_s:.2f} s before the kill, {worst_after_s:.2f} s after; worst submit latency "
        f"{report['latency_ms']['max']} ms; site freshness max {report['freshness_s']['max']} s"
    )
    return {
        "line": line,
        "lost": lost,
        "twice": twice,
        "counted_vs_oracle": counted_vs_oracle,
        "acknowledged_after_kill": acknowledged_after,
        "delivered_after_kill": delivered_after,
    }
