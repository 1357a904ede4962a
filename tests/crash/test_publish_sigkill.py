"""Crash safety of publish: `suara publish run` killed with SIGKILL mid-cycle, again and again.

Tally (with its relay) and aggregate run in-process (tests/support/publish.py's `pipeline`); the
publisher is a real `suara publish run` process writing a site directory. It is killed at seeded
random moments while it writes its large first (full) cycle, then while it publishes incremental
cycles as forms keep arriving. While it is dead the site must be readable: every .json parses, and a
snapshot pointer, when there is one, names a snapshot whose files are all there. Restarted, it
catches up with aggregate, and then the whole site equals tests/support/oracles/publish.py, every .gz matches
its file, no temp file is left and the history agrees with the national totals.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.crash.rig import PublishProcess
from tests.support.oracles.publish import Registry, expected_site
from tests.support.publish import Pipeline
from tests.support.waiting import WAIT_S, poll_until

pytestmark = pytest.mark.slow

SEED = 20261124
FULL_KILLS = 2  # kills during the first (full) cycle
INCREMENTAL_KILLS = 5  # kills while incremental cycles run and forms keep arriving
CONTESTS = ("ppwp", "pdpr", "pkwkp")
BACKLOG_NIGHTS = 12  # submission rounds (1-8 forms each) between a kill and the restart
STARTUP_S = 60.0  # bound on the child importing, connecting and taking the lock


@pytest.fixture
async def publisher(pipeline: Pipeline, site: Path, tmp_path: Path) -> AsyncIterator[PublishProcess]:
    env = await pipeline.publish_env("publish-crash", site, tmp_path)
    process = PublishProcess(env, tmp_path)
    try:
        yield process
    finally:
        await process.close()


async def _layout(db: asyncpg.Connection) -> set[str]:
    """Every data file a complete site has (it depends on the registry only: TPS without a form have one too)."""
    registry = await Registry.read(db)
    return {path for contest in CONTESTS for path in expected_site(registry, contest, {}, {})}


async def _aggregate_head(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT sequence FROM aggregate.head WHERE singleton"))


def _documents(site: Path) -> dict[str, Any]:
    """Every .json of the site, parsed; fails on one that is not whole."""
    documents = {}
    for file in site.rglob("*.json"):
        try:
            documents[str(file.relative_to(site))] = json.loads(file.read_bytes())
        except ValueError as exc:
            raise AssertionError(f"{file.relative_to(site)} is not whole JSON: {exc}") from None
    return documents


def _temp_files(site: Path) -> list[Path]:
    return list(site.rglob("*.tmp"))


def _stale_gz(site: Path) -> list[str]:
    """The .json files whose .gz sibling is not their compressed bytes."""
    return [
        str(f.relative_to(site))
        for f in site.rglob("*.json")
        if gzip.decompress(f.with_name(f.name + ".gz").read_bytes()) != f.read_bytes()
    ]


async def assert_readable_while_dead(db: asyncpg.Connection, site: Path, layout: set[str]) -> dict[str, Any] | None:
    """No partial file anywhere; a pointer, if any, names a complete snapshot. Returns the pointer."""
    # In a thread: the in-process tally and relay share this event loop, and the scan reads ~50k files.
    documents = await asyncio.to_thread(_documents, site)
    pointer = documents.get("suara/snapshot.json")
    if pointer is None:
        return None
    cursor = await db.fetchval("SELECT snapshot FROM publish.cursor WHERE singleton")
    # The pointer is written before the cursor moves: a kill between the two leaves it one ahead.
    assert pointer["snapshot"] in (cursor, cursor + 1), (pointer["snapshot"], cursor)
    assert pointer["aggregate_sequence"] <= await _aggregate_head(db)
    missing = sorted(layout - documents.keys())
    assert not missing, f"snapshot {pointer['snapshot']} is published, yet {len(missing)} files are not: {missing[:5]}"
    for path in ("index.html", "app.js", "app.css", *(f"pemilu/{c}.json" for c in CONTESTS)):
        assert (site / path).is_file(), path
    for path, doc in documents.items():
        if path.startswith("pemilu/hhcw/") and path.count("/") == 7:  # a TPS file: its photos are there
            for image in doc["images"]:
                assert image is None or (site / image.lstrip("/")).is_file(), (path, image)
    for contest in CONTESTS:
        for entry in documents.get(f"suara/riwayat/{contest}.json", []):
            assert f"suara/riwayat/{contest}/{entry['snapshot']}.json" in documents, (contest, entry)
    return dict(pointer)


@dataclass
class Submitter:
    """Forms in small random nights, in the background, until stopped (one task: Pipeline is not reentrant)."""

    p: Pipeline
    rng: random.Random
    nights: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self.stop.is_set():
            contest = self.rng.choice(("ppwp", "ppwp", "pdpr", "pkwkp"))
            await self.p.random_night(self.rng, self.rng.randint(1, 8), contest=contest)
            self.nights += 1
            await asyncio.sleep(self.rng.uniform(0.0, 0.02))

    def check(self) -> None:
        assert self.task is not None
        if self.task.done():
            self.task.result()  # its exception, if it failed
            raise AssertionError("the submitter stopped")

    async def wait_nights(self, n: int) -> None:
        """A bounded poll of the background task's progress: until `n` more nights were submitted."""
        target = self.nights + n
        await poll_until(lambda: self._reached(target), f"{n} more nights submitted", check=self.check)

    async def _reached(self, target: int) -> bool:
        return self.nights >= target

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task


@pytest.fixture
async def watch(pipeline: Pipeline) -> AsyncIterator[asyncpg.Connection]:
    """The test's own connection (pipeline.db is busy enrolling devices while forms are submitted)."""
    conn = await asyncpg.connect(pipeline.db_url)
    try:
        yield conn
    finally:
        await conn.close()


async def test_publish_killed_mid_cycle_repeatedly_leaves_a_readable_site_and_catches_up(
    pipeline: Pipeline, publisher: PublishProcess, site: Path, watch: asyncpg.Connection
) -> None:
    rng = random.Random(SEED)
    relay = pipeline.tally.app.relay
    assert relay is not None
    layout = await _layout(watch)
    await pipeline.random_night(rng, 40)
    await pipeline.random_night(rng, 10, contest="pkwkp")
    await asyncio.wait_for(pipeline.delivered(), WAIT_S)

    # 1. Killed while writing the first, full cycle (tens of thousands of files).
    pointers_after_full_kills = []
    for _ in range(FULL_KILLS):
        await publisher.start()
        assert publisher.log is not None
        await publisher.log.wait_for_event("publish_active", STARTUP_S)
        await asyncio.sleep(rng.uniform(0.1, 2.0))
        await publisher.kill()
        pointers_after_full_kills.append(await assert_readable_while_dead(watch, site, layout))
    assert any(p is None for p in pointers_after_full_kills), "no kill landed before the full cycle finished"

    # 2. Once a run has finished its full cycle: killed in incremental cycles while forms keep arriving.
    submitter = Submitter(pipeline, random.Random(SEED + 1))
    submitter.start()
    cut = 0  # runs killed inside their first incremental cycle, before it published
    try:
        await publisher.start()
        await publisher.wait_published(1)  # the full cycle, whole at last
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        await publisher.kill()
        assert await assert_readable_while_dead(watch, site, layout) is not None
        for _ in range(INCREMENTAL_KILLS):
            await submitter.wait_nights(BACKLOG_NIGHTS)  # while it is dead: a large incremental cycle awaits it
            await publisher.start()
            assert publisher.log is not None
            await publisher.log.wait_for_event("publish_active", STARTUP_S)  # it took the lock and is cycling
            await asyncio.sleep(rng.uniform(0.0, 1.2))
            await publisher.kill()
            cut += publisher.published_in_last_run == 0
            assert await assert_readable_while_dead(watch, site, layout) is not None
        submitter.check()
    finally:
        await submitter.close()
    assert cut >= 1, "no kill landed inside an incremental cycle"

    # 3. Back for good: it catches up with aggregate, and the site is exactly what the forms say.
    await asyncio.wait_for(pipeline.delivered(), WAIT_S)
    head = await _aggregate_head(watch)
    await publisher.start()
    await poll_until(lambda: _pointer_reached(site, head), f"the pointer at aggregate sequence {head}",
                     check=publisher.check)  # fmt: skip

    await pipeline.check_site(site, CONTESTS)
    assert not _temp_files(site), "the restarted publisher sweeps what a killed one left"
    stale_gz = _stale_gz(site)
    assert not stale_gz, f"a .gz differs from its file: {stale_gz[:5]}"
    for contest in CONTESTS:
        index = json.loads((site / f"suara/riwayat/{contest}.json").read_bytes())
        snapshots = [e["snapshot"] for e in index]
        assert snapshots == sorted(set(snapshots)), snapshots
        for snapshot in snapshots:
            assert (site / f"suara/riwayat/{contest}/{snapshot}.json").is_file(), (contest, snapshot)
        last = json.loads((site / f"suara/riwayat/{contest}/{snapshots[-1]}.json").read_bytes())
        national = json.loads((site / f"pemilu/hhcw/{contest}.json").read_bytes())
        assert {k: v for k, v in last["nasional"].items() if k.isdigit()} == {
            k: v for k, v in national["chart"].items() if k.isdigit()
        }, f"{contest}: the newest history entry is not the published national result"
    assert publisher.kills == FULL_KILLS + 1 + INCREMENTAL_KILLS
    print(f"kills: {publisher.kills}, incremental cycles cut: {cut}, nights submitted: {submitter.nights}")


async def _pointer_reached(site: Path, sequence: int) -> bool:
    try:
        pointer = json.loads((site / "suara/snapshot.json").read_bytes())
    except FileNotFoundError:
        return False
    return bool(pointer["aggregate_sequence"] >= sequence)
