"""Issue 15's drill 4: the active publish dies mid-cycle; the standby continues; the site never shows a
half-written snapshot.

Real PostgreSQL, tally (with its relay) and aggregate in-process (tests/support/publish.py's `pipeline`),
two `suara publish run` processes (active and standby, one advisory lock) writing one SeaweedFS bucket
(tests/support/s3.py, a real S3 server). A reader of the test's own polls the bucket throughout.

How the kill lands mid-cycle, without sleeping on chance: once the active one has published, it is frozen
(SIGSTOP, its lock still held) while a burst of forms reaches aggregate, then thawed, so its next cycle
is a large one (several of the sink's writes); the test watches the bucket and SIGKILLs it as soon as the
national totals show more than the pointer does, that is while that cycle is being written. That it was
cut is then proved: the killed process never logged that snapshot, the standby publishes it.

A whole snapshot, from the order the cycle writes in (services/publish/cycle.py): every data file of a
snapshot lands before its pointer, and a contest's history index after the pointer. So, at every read,
whatever the reader sees must satisfy (each file read after the one it is checked against):
- every object parses (no partial file);
- every snapshot the history index lists is published (the pointer, read after the index, is at least
  it), and its entry file is there and agrees with the index (snapshot and ts);
- the chain key the pointer's head is signed by is in suara/kunci-rantai.json;
- each contest's national totals file shows at least what the pointer says (this load only adds counted
  forms), over the same number of TPS;
- every photo a TPS file names is there.

The oracle is what tally acknowledged (pipeline.current): afterwards the standby has published everything
and the bucket's totals and TPS files equal tests/support/oracles/publish.py's expected site.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from botocore.exceptions import ClientError

from tests.crash.rig import PublishProcess
from tests.support.factories import jpeg, png
from tests.support.oracles.publish import Registry, compare, expected_site
from tests.support.publish import Pipeline
from tests.support.s3 import Bucket, bucket_name
from tests.support.waiting import STARTUP_S, WAIT_S, poll_until

pytestmark = pytest.mark.slow

SEED = 20261207
CONTESTS = ("ppwp", "pdpr", "pkwkp")
PREFIX = "site"
FULL_CYCLE_S = 600.0  # bound on the first, full cycle: every file of three contests, uploaded to SeaweedFS
CONCURRENT = 16  # forms in flight at once


def _key(path: str) -> str:
    return f"{PREFIX}/{path}"


@dataclass
class Reader:
    """Reads the bucket as a visitor would, in a thread of its own, and checks each read (module docstring)."""

    bucket: Bucket
    photos: list[str]  # TPS files (site paths) that name photos
    stop: threading.Event = field(default_factory=threading.Event)
    reads: int = 0
    half_written: list[str] = field(default_factory=list)  # what each bad read saw
    pointers: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, snapshot) at each change
    ahead_seen: int = 0  # reads that caught a cycle under way: national totals ahead of the pointer

    def _get(self, path: str) -> Any:
        try:
            body = self.bucket.client.get_object(Bucket=self.bucket.name, Key=_key(path))["Body"].read()
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise
        try:
            return json.loads(body)
        except ValueError:
            self.half_written.append(f"{path} is not whole JSON ({len(body)} bytes)")
            return None

    def _exists(self, path: str) -> bool:
        try:
            self.bucket.client.head_object(Bucket=self.bucket.name, Key=_key(path))
        except ClientError:
            return False
        return True

    def run(self) -> None:
        while not self.stop.is_set():
            self.read_once()

    def read_once(self) -> None:
        indexes = {c: self._get(f"suara/riwayat/{c}.json") or [] for c in CONTESTS}
        pointer = self._get("suara/snapshot.json")
        if pointer is None:
            self.half_written.extend(f"{c}: a history index before any pointer" for c in CONTESTS if indexes[c])
            return
        self.reads += 1
        snapshot = pointer["snapshot"]
        if not self.pointers or self.pointers[-1][1] != snapshot:
            self.pointers.append((time.monotonic(), snapshot))
        bad = self.half_written
        head = pointer["chain_head"]
        keys = self._get("suara/kunci-rantai.json")
        if head is not None and (keys is None or head["key_id"] not in {k["key_id"] for k in keys["keys"]}):
            bad.append(f"snapshot {snapshot}: its head's key {head['key_id']} is not in kunci-rantai.json")
        ahead = False
        for contest, shown in pointer["contests"].items():
            national = self._get(f"pemilu/hhcw/{contest}.json")
            if national is None or national["progres"]["total"] != shown["total"]:
                bad.append(f"snapshot {snapshot}: {contest}'s national totals missing or over other TPS")
            elif national["progres"]["progres"] < shown["progres"]:
                bad.append(f"snapshot {snapshot}: {contest}'s national totals behind the pointer")
            else:
                ahead |= national["progres"]["progres"] > shown["progres"]
            index = indexes[contest]
            if any(e["snapshot"] > snapshot for e in index):
                bad.append(f"{contest}'s index lists {index[-1]['snapshot']}, the pointer says {snapshot}")
            if index:  # the newest entry (every entry is checked at the end, without racing the writer)
                entry = self._get(f"suara/riwayat/{contest}/{index[-1]['snapshot']}.json")
                if entry is None or (entry["snapshot"], entry["ts"]) != (index[-1]["snapshot"], index[-1]["ts"]):
                    bad.append(f"{contest}'s index names snapshot {index[-1]['snapshot']}, its entry is {entry}")
        self.ahead_seen += ahead
        for path in self.photos:
            tps = self._get(path)
            for image in (tps or {}).get("images") or []:
                if image is not None and not self._exists(image.lstrip("/")):
                    bad.append(f"{path} names {image}, which is not there")


async def _until(what: str, condition: Callable[[], bool], check: Callable[[], None], within_s: float = WAIT_S) -> None:
    async def holds() -> bool:
        return condition()

    await poll_until(holds, what, within_s, check)


@dataclass
class Load:
    """Forms through tally, several at once; pipeline.current keeps what tally acknowledged (the oracle)."""

    p: Pipeline
    rng: random.Random
    sent: int = 0

    async def forms(self, plan: list[tuple[str, str, int]]) -> None:
        """(tps, contest, version) each; now and then with photos, now and then quarantined (at version 1
        only, and never corrected: so national progress only grows, which the reader relies on)."""
        for tps, _, _ in plan:
            await self.p.key(tps)  # enrolled one at a time: pipeline.db is one connection
        queue = list(plan)

        async def sender() -> None:
            while queue:
                tps, contest, version = queue.pop()
                kinds = [self.rng.choice((jpeg, png)) for _ in range(self.rng.choice((0, 0, 0, 1, 3)))]
                photos = [kind(self.rng.randbytes(4)) for kind in kinds]
                quarantined = version == 1 and self.rng.random() < 0.05 and (tps, contest) not in self.p.current
                await self.p.submit(tps, contest, version, seed=self.rng.randint(0, 3), quarantined=quarantined,
                                    photos=photos)  # fmt: skip
                self.sent += 1

        await asyncio.gather(*(sender() for _ in range(CONCURRENT)))


@pytest.fixture
async def publishers(
    pipeline: Pipeline, s3_endpoint: str, tmp_path: Path
) -> AsyncIterator[tuple[Bucket, PublishProcess, PublishProcess]]:
    bucket = await asyncio.to_thread(Bucket, s3_endpoint, bucket_name("site", tmp_path))
    env = await pipeline.publish_env("publish-failover", tmp_path / "unused-site", tmp_path)
    env.update(SUARA_PUBLISH_TO=f"s3://{bucket.name}/{PREFIX}", SUARA_S3_ENDPOINT_URL=s3_endpoint)
    first, second = PublishProcess(env, tmp_path), PublishProcess(env, tmp_path)
    try:
        yield bucket, first, second
    finally:
        await first.close()
        await second.close()


async def test_the_standby_publish_takes_over_a_cycle_cut_midway_and_no_read_sees_half_a_snapshot(
    pipeline: Pipeline,
    publishers: tuple[Bucket, PublishProcess, PublishProcess],
    db: asyncpg.Connection,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    bucket, active, standby = publishers
    rng = random.Random(SEED)
    load = Load(pipeline, rng)
    registry = await Registry.read(db)
    held = {c: [t for t in registry.tps if t.startswith(registry.scope[c])] for c in CONTESTS}
    for tps in held.values():
        rng.shuffle(tps)
    # Before the publishers: a fifth of each contest's TPS, so the first (full) cycle has data to show.
    await load.forms([(t, c, 1) for c in CONTESTS for t in held[c][: len(held[c]) // 5]])
    await pipeline.delivered()

    await active.start()
    assert active.log is not None
    await active.log.wait_for_event("publish_active", STARTUP_S)
    await standby.start()  # finds the lock held: a hot standby
    await _until("the full cycle published", lambda: active.published() >= 1, active.check, FULL_CYCLE_S)

    with_photos = sorted({(t, c) for (t, c), acc in pipeline.current.items() if acc.form.photo_sha256})[:6]
    reader = Reader(bucket, [f"pemilu/hhcw/{c}/{_nest(t)}.json" for t, c in with_photos])
    reading = asyncio.create_task(asyncio.to_thread(reader.run))
    try:
        await _until("the reader's first whole read", lambda: reader.reads > 0, active.check)

        # A backlog for one large cycle: the active one frozen (lock held) while a burst reaches aggregate.
        snapshot_before = active.snapshots()[-1]
        active.pause()
        # Another fifth of two contests and some corrections: a few thousand files, several of the sink's writes.
        burst = [(t, c, 1) for c in ("ppwp", "pdpr") for t in held[c][len(held[c]) // 5 : 2 * len(held[c]) // 5]]
        burst += [(t, c, 2) for c in CONTESTS for t in held[c][: len(held[c]) // 20]]  # corrections
        await load.forms(burst)
        await pipeline.delivered()
        assert active.snapshots()[-1] == snapshot_before and not standby.snapshots(), "frozen, and the only one"
        active.resume()

        caught = await asyncio.to_thread(_cycle_under_way, bucket, WAIT_S)
        await active.kill()
        killed_at = time.monotonic()
        last_of_killed = active.snapshots()[-1]
        assert caught, "no read caught the large cycle before its pointer"
        assert last_of_killed == snapshot_before, f"the killed one finished snapshot {last_of_killed}"

        # The night goes on while the standby takes over.
        assert standby.log is not None
        await standby.log.wait_for_event("publish_active", WAIT_S)
        takeover_s = time.monotonic() - killed_at
        await load.forms([(t, c, 1) for c in CONTESTS for t in held[c][2 * len(held[c]) // 5 : len(held[c]) // 2]])
        await pipeline.delivered()
        head = int(await db.fetchval("SELECT sequence FROM aggregate.head WHERE singleton"))
        await _until(
            f"the standby's pointer at aggregate sequence {head}",
            lambda: _pointer_at(bucket, head),
            standby.check,
            within_s=FULL_CYCLE_S,
        )
        assert standby.snapshots()[0] == snapshot_before + 1, "the standby redoes the cut snapshot"
    finally:
        reader.stop.set()
        await reading
        for name, process in (("active", active), ("standby", standby)):
            if process.log is not None:
                (tmp_path / f"{name}.log").write_text(process.log.text())
    reader.read_once()  # and once more, now that nothing writes

    first_after_kill = next(t for t, s in reader.pointers if t > killed_at)
    stale_s = first_after_kill - killed_at
    assert standby.log is not None
    redo_s = next(e["ms"] for e in standby.log.events() if e.get("event") == "published") / 1000
    lost, twice, totals_wrong = await _against_oracle(pipeline, bucket, registry, tmp_path / "read-back")
    entries_wrong = await asyncio.to_thread(_history_problems, bucket)
    record_property(
        "figures",
        f"publish failover drill: {len(pipeline.current)} forms acknowledged ({load.sent} sent), {lost} lost, "
        f"{twice} counted twice; totals vs oracle: {'exact' if not totals_wrong else f'{totals_wrong} files differ'}; "
        f"standby active {takeover_s:.1f} s after the kill, its first cycle {redo_s:.1f} s, "
        f"site stale {stale_s:.1f} s after the kill (standby's first snapshot); {reader.reads} reads, "
        f"{reader.ahead_seen} of them mid-cycle; half-written snapshots seen: {len(reader.half_written)}",
    )
    assert reader.half_written == [], reader.half_written[:5]
    assert reader.ahead_seen > 0, "no read landed inside a cycle: the check above checked nothing mid-cycle"
    assert entries_wrong == [], entries_wrong[:5]
    assert (lost, twice, totals_wrong) == (0, 0, 0)


def _nest(code: str) -> str:
    from suara.site.paths import area_path

    return area_path(code)


def _read(bucket: Bucket, path: str) -> Any:
    try:
        return json.loads(bucket.client.get_object(Bucket=bucket.name, Key=_key(path))["Body"].read())
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise


def _cycle_under_way(bucket: Bucket, within_s: float) -> bool:
    """Until the national totals of a contest show more than the pointer does (a cycle's files landing
    before its pointer): True; False if the pointer moved first or time ran out."""
    start = _read(bucket, "suara/snapshot.json")
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        pointer = _read(bucket, "suara/snapshot.json")
        if pointer["snapshot"] != start["snapshot"]:
            return False
        for contest in ("ppwp", "pdpr"):
            national = _read(bucket, f"pemilu/hhcw/{contest}.json")
            if national["progres"]["progres"] > pointer["contests"][contest]["progres"]:
                return True
    return False


def _pointer_at(bucket: Bucket, sequence: int) -> bool:
    pointer = _read(bucket, "suara/snapshot.json")
    return bool(pointer and pointer["aggregate_sequence"] >= sequence and pointer["caught_up"])


def _history_problems(bucket: Bucket) -> list[str]:
    problems = []
    for contest in CONTESTS:
        index = _read(bucket, f"suara/riwayat/{contest}.json")
        snapshots = [e["snapshot"] for e in index]
        if snapshots != sorted(set(snapshots)):
            problems.append(f"{contest}: index out of order {snapshots}")
        for e in index:
            entry = _read(bucket, f"suara/riwayat/{contest}/{e['snapshot']}.json")
            if entry is None or (entry["snapshot"], entry["ts"]) != (e["snapshot"], e["ts"]):
                problems.append(f"{contest}: {e} has entry {entry}")
    return problems


async def _against_oracle(pipeline: Pipeline, bucket: Bucket, registry: Registry, site: Path) -> tuple[int, int, int]:
    """(acknowledged forms lost, forms counted twice, totals files that differ) against the oracle.

    Every totals file of every area and the TPS file of every TPS with a form are read back from the
    bucket into a directory and compared with tests/support/oracles/publish.py's expected documents."""
    lost = twice = wrong = 0
    for contest in CONTESTS:
        expected = expected_site(registry, contest, pipeline.current, pipeline.photo_types())
        tps_files = {f"pemilu/hhcw/{contest}/{_nest(t)}.json" for (t, c) in pipeline.current if c == contest}
        wanted = {p: doc for p, doc in expected.items()
                  if p in tps_files or (p.startswith("pemilu/hhcw/") and p.count("/") < 7)}  # fmt: skip
        objects = await bucket.get_many([_key(p) for p in wanted])
        for path in wanted:
            (site / path).parent.mkdir(parents=True, exist_ok=True)
            (site / path).write_bytes(objects[_key(path)].body)
        problems = compare(site, wanted)
        lost += sum(1 for line in problems if line.split(":")[0] in tps_files)
        wrong += sum(1 for line in problems if line.split(":")[0] not in tps_files)
        national = json.loads((site / f"pemilu/hhcw/{contest}.json").read_bytes())
        twice += max(0, national["progres"]["progres"] - expected[f"pemilu/hhcw/{contest}.json"]["progres"]["progres"])
    return lost, twice, wrong
