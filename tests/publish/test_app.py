"""PublishApp as `suara publish run` runs it, in-process: the loop, GetStatus, the standby, an aggregate outage.

Tally (with its relay) and aggregate are the `pipeline` fixture's; the app under test is built from
Settings alone, as the command builds it. Every published file is checked against
tests/support/oracles/publish.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
import structlog

from services.aggregate.server import AggregateApp
from services.publish.server import LOCK_KEY, PublishApp
from services.publish.sinks.local import LocalSink
from suara.client.stubs import publish_stub
from suara.runtime.settings import LogSettings, PeerSettings, PublishSettings, Settings, SiteSettings
from suara.v1 import publish_pb2
from tests.publish.recording import KilledMidway, RecordingSink
from tests.support.aggregate import aggregate_settings
from tests.support.pki import suite_pki, with_tls
from tests.support.publish import Pipeline
from tests.support.waiting import poll_until

WAIT_S = 30.0  # bound on anything awaited; normally well under a few seconds
STOP_S = 10.0  # bound on PublishApp.stop(): a stop that hangs fails the test instead of hanging the run


def _tree(site: Path) -> dict[str, bytes]:
    return {str(f.relative_to(site)): f.read_bytes() for f in site.rglob("*") if f.is_file()}


def _pointer(site: Path) -> dict[str, Any]:
    return dict(json.loads((site / "suara/snapshot.json").read_bytes()))


async def _settings(p: Pipeline, site: Path, tmp_path: Path) -> Settings:
    credential = suite_pki().bundle("publish-app", "reader")
    peers = PeerSettings(
        aggregate=f"127.0.0.1:{p.aggregate.internal_port}", tally=f"127.0.0.1:{p.tally.app.internal_port}"
    )
    return with_tls(
        Settings(
            publish=PublishSettings(port=0, credential=str(credential), interval_s=0.05),
            site=SiteSettings(dir=site),
            peers=peers,
            log=LogSettings(format="console"),
            data_dir=tmp_path / "state",
        )
    )


@contextlib.asynccontextmanager
async def running(app: PublishApp) -> AsyncIterator[PublishApp]:
    await app.start()
    try:
        yield app
    finally:
        await _stop(app)


async def _stop(app: PublishApp) -> None:
    try:
        await asyncio.wait_for(app.stop(0.5), STOP_S)
    except TimeoutError:
        pytest.fail(f"PublishApp.stop() did not return within {STOP_S}s")


async def _published(p: Pipeline, app: PublishApp) -> None:
    """Until `app` has published everything tally acknowledged so far (the pointer at aggregate's head)."""
    await asyncio.wait_for(p.delivered(), WAIT_S)
    head = await _aggregate_head(p)

    async def caught_up() -> None:
        while _pointer_sequence(app.settings.site.dir) < head:
            await app.wait_cycles(1)  # a cycle may also fail (aggregate unreachable) and be retried

    await asyncio.wait_for(caught_up(), WAIT_S)


def _pointer_sequence(site: Path) -> int:
    try:
        return int(_pointer(site)["aggregate_sequence"])
    except FileNotFoundError:
        return -1


async def _aggregate_head(p: Pipeline) -> int:
    return int(await p.db.fetchval("SELECT sequence FROM aggregate.head WHERE singleton"))


async def test_the_loop_publishes_by_itself_and_get_status_matches_the_pointer_and_tally(
    pipeline: Pipeline, site: Path, tmp_path: Path
) -> None:
    rng = random.Random(11)
    app = await PublishApp.create(await _settings(pipeline, site, tmp_path), pipeline.db_url)
    async with running(app), suite_pki().channel(f"127.0.0.1:{app.port}") as channel:
        await pipeline.random_night(rng, 25)
        await _published(pipeline, app)
        assert app.active and app.last is not None
        await pipeline.check_site(site)
        first = _pointer(site)

        await pipeline.random_night(rng, 15)
        await pipeline.random_night(rng, 5, contest="pkwkp")
        await _published(pipeline, app)
        await pipeline.check_site(site)
        pointer = _pointer(site)
        assert pointer["snapshot"] > first["snapshot"]
        assert not app.last.full, "after the first cycle only what changed is rewritten"

        status = (await publish_stub(channel).GetStatus(publish_pb2.GetStatusRequest(), timeout=5)).status
        head = await pipeline.db.fetchrow("SELECT position, hash FROM tally.chain_head")
        tally_head = {"position": head["position"], "hash": bytes(head["hash"]).hex()}
        assert status.snapshot == pointer["snapshot"] == app.last.snapshot
        assert status.aggregate_sequence == pointer["aggregate_sequence"] == await _aggregate_head(pipeline)
        assert status.aggregate_newest == status.aggregate_sequence, "caught up: no lag"
        published = {k: pointer["chain_head"][k] for k in ("position", "hash")}
        assert {"position": status.chain_position, "hash": status.chain_hash} == published == tally_head
        assert status.files == app.last.files > 0
        assert not status.full_rebuild
        assert status.sink == f"local:{site}"
        published_at = await pipeline.db.fetchval("SELECT updated_at FROM publish.cursor")
        assert status.published_at.ToDatetime(UTC) == published_at


async def test_a_second_app_stands_by_without_writing_and_takes_over_when_the_first_stops(
    pipeline: Pipeline, site: Path, tmp_path: Path
) -> None:
    rng = random.Random(12)
    settings = await _settings(pipeline, site, tmp_path)
    first = await PublishApp.create(settings, pipeline.db_url)
    standby_sink = RecordingSink(LocalSink(site))
    second = await PublishApp.create(settings, pipeline.db_url, sink=standby_sink)
    first_running = True
    await first.start()
    try:
        await asyncio.wait_for(_until_active(first), WAIT_S)  # alone, it takes the lock
        async with running(second):
            await pipeline.random_night(rng, 10)
            await _published(pipeline, first)
            # Both have asked for the lock: PostgreSQL shows two publish sessions whose last statement was
            # the try-lock, one of them holding it. A bounded poll: the standby's attempts are not awaitable.
            await poll_until(lambda: _two_lock_tries(pipeline), "the standby asking for the lock", WAIT_S)
            holders = await pipeline.db.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND ((classid::bigint << 32) | objid::bigint) = $1",
                LOCK_KEY,
            )
            assert holders == 1

            await pipeline.random_night(rng, 10)
            await _published(pipeline, first)
            await pipeline.check_site(site)
            assert not second.active and second.last is None
            assert standby_sink.paths == [], "a standby writes nothing"

            # The first stops: its session, and with it the lock, is gone; the standby takes over.
            first_running = False
            await _stop(first)
            await asyncio.wait_for(_until_active(second), WAIT_S)
            before = _pointer(site)["snapshot"]
            await pipeline.random_night(rng, 10)
            await _published(pipeline, second)
            await pipeline.check_site(site)
            assert standby_sink.paths, "the new active publisher writes"
            assert _pointer(site)["snapshot"] > before, "it continues from the shared cursor"
    finally:
        if first_running:
            await _stop(first)


async def test_the_active_app_whose_lock_session_the_server_ends_takes_the_lock_again_and_publishes(
    pipeline: Pipeline, site: Path, tmp_path: Path
) -> None:
    """What a database failover does to the active publisher: the session holding its lock is gone."""
    rng = random.Random(13)
    app = await PublishApp.create(await _settings(pipeline, site, tmp_path), pipeline.db_url)
    async with running(app):
        await asyncio.wait_for(_until_active(app), WAIT_S)
        await pipeline.random_night(rng, 10)
        await _published(pipeline, app)
        ended = await pipeline.db.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory'"
            " AND granted AND ((classid::bigint << 32) | objid::bigint) = $1",
            LOCK_KEY,
        )
        assert ended == 1
        before = _pointer(site)["snapshot"]
        await pipeline.random_night(rng, 10)
        await _published(pipeline, app)
        await pipeline.check_site(site)
        assert app.active and _pointer(site)["snapshot"] > before


async def test_a_publisher_that_lost_its_lock_mid_cycle_writes_no_pointer_over_the_new_active_one(
    pipeline: Pipeline, site: Path, tmp_path: Path
) -> None:
    """A failover ends the active publisher's lock session while it is mid-cycle (held before its files);
    a second publisher takes the lock and publishes. Let go, the first must not write its pointer: the site
    would go back to its older snapshot, or carry two snapshots of one number."""
    rng = random.Random(17)
    first = await PublishApp.create(await _settings(pipeline, site, tmp_path / "first"), pipeline.db_url)
    sink = first.publisher.sink = RecordingSink(first.publisher.sink)  # type: ignore[arg-type]
    async with running(first):
        await asyncio.wait_for(_until_active(first), WAIT_S)
        await pipeline.random_night(rng, 10)
        await _published(pipeline, first)
        sink.hold_next()
        await pipeline.random_night(rng, 10)
        await asyncio.wait_for(sink.holding.wait(), WAIT_S)
        ended = await pipeline.db.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory'"
            " AND granted AND ((classid::bigint << 32) | objid::bigint) = $1",
            LOCK_KEY,
        )
        assert ended == 1
        second = await PublishApp.create(await _settings(pipeline, site, tmp_path / "second"), pipeline.db_url)
        async with running(second):
            await asyncio.wait_for(_until_active(second), WAIT_S)
            await _published(pipeline, second)
            pointer = (site / "suara/snapshot.json").read_bytes()
            pointers_before = sink.paths.count("suara/snapshot.json")
            sink.release()
            await asyncio.wait_for(first.wait_cycles(2), WAIT_S)  # the held cycle ends, the lock is looked at
            assert sink.paths.count("suara/snapshot.json") == pointers_before, "the first wrote a pointer"
            assert (site / "suara/snapshot.json").read_bytes() == pointer, "the first publisher wrote its pointer"
            assert not first.active and second.active


async def _until_active(app: PublishApp) -> None:
    """Until `app` holds the lock: it decides at the top of each loop turn, so look after each turn."""
    while not app.active:
        await app.wait_cycles(1)


async def _two_lock_tries(p: Pipeline) -> bool:
    tries = await p.db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        # The standby's last statement is its try-lock; the active one's its try-lock or, once it has
        # published, the check that it still holds the lock before each pointer.
        " AND application_name = 'suara-publish' AND query ILIKE '%advisory%'"
    )
    return int(tries) >= 2


async def test_aggregate_down_keeps_the_last_site_and_publishing_resumes_when_it_is_back(
    pipeline: Pipeline, site: Path, tmp_path: Path
) -> None:
    rng = random.Random(13)
    relay = pipeline.tally.app.relay
    assert relay is not None
    relay.backoff.cap_s = 0.5  # only to keep the test short: the relay retries at most half a second apart
    app = await PublishApp.create(await _settings(pipeline, site, tmp_path), pipeline.db_url)
    async with running(app):
        await pipeline.random_night(rng, 20)
        await _published(pipeline, app)
        await pipeline.check_site(site)
        published, last = _tree(site), app.last
        port, internal_port = pipeline.aggregate.port, pipeline.aggregate.internal_port

        await pipeline.aggregate.stop(0.5)
        with structlog.testing.capture_logs() as logs:
            await pipeline.random_night(rng, 10)  # tally still accepts; nothing reaches aggregate
            await asyncio.wait_for(app.wait_cycles(2), WAIT_S)  # cycles that fail (aggregate unreachable)
        failures = [e for e in logs if e["event"] == "publish_cycle_failed"]
        assert failures, [e["event"] for e in logs]
        assert all("UNAVAILABLE" in e["error"] for e in failures), failures
        assert _tree(site) == published, "while aggregate is down the last site stays as it was"
        assert app.last is last and app.active

        restarted = await AggregateApp.create(aggregate_settings(port, internal_port), pipeline.db_url)
        await restarted.start()
        pipeline.aggregate = restarted  # the fixture stops this one
        await _published(pipeline, app)
        await pipeline.check_site(site)
        assert app.last is not last and app.last is not None and not app.last.full
        assert _pointer(site)["aggregate_sequence"] == await _aggregate_head(pipeline)


async def test_a_cycle_killed_after_recording_its_history_still_publishes_that_history(pipeline: Pipeline) -> None:
    """The cycle records its history entry in the database before its files are out; killed in between, the
    cycle that redoes it must still publish the entry (the history file and the index listing it)."""
    stations = pipeline.all_tps[:6]
    for i, tps in enumerate(stations[:3]):
        await pipeline.submit(tps, "ppwp", 1, seed=i)
    first = await pipeline.cycle()
    assert first is not None
    for i, tps in enumerate(stations[3:]):  # no photos: the first file this cycle writes comes after its history
        await pipeline.submit(tps, "ppwp", 1, seed=i)
    pipeline.publisher.sink = RecordingSink(LocalSink(pipeline.site), die_after=0)
    with pytest.raises(KilledMidway):
        await pipeline.cycle()
    pipeline.publisher.sink = LocalSink(pipeline.site)
    redone = await pipeline.cycle()  # the same changes, from the same cursor
    assert redone is not None and redone.snapshot == first.snapshot + 1
    index = json.loads((pipeline.site / "suara/riwayat/ppwp.json").read_bytes())
    assert [e["snapshot"] for e in index] == [first.snapshot, redone.snapshot], index
    last = json.loads((pipeline.site / f"suara/riwayat/ppwp/{redone.snapshot}.json").read_bytes())
    national = json.loads((pipeline.site / "pemilu/hhcw/ppwp.json").read_bytes())
    assert {k: v for k, v in last["nasional"].items() if k.isdigit()} == {
        k: v for k, v in national["chart"].items() if k.isdigit()
    }
