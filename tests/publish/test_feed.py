"""The change feed and the bulk downloads, read as a heavy reader would: from the site's files alone.

The consumer here is written from docs/layout.md ("The change feed"), not from publish's code: it
follows `next` from the feed head's oldest page, keeps each area's and TPS's latest entry, and must end
with exactly what every totals and TPS file says after a load test with faults. A second consumer starts
mid-feed from a state the first one held, and must end the same. The bulk CSVs must agree row for row
with the TPS files, and their counted rows must add up to every desa's totals file.
"""

from __future__ import annotations

import asyncio
import copy
import csv
import gzip
import io
import json
import random
import threading
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from loadtest.config import Config
from loadtest.run import run_loadtest
from services.publish import cycle, feed
from services.publish.files import SiteFile
from services.publish.sinks.local import LocalSink
from services.publish.sinks.s3 import S3Sink
from tests.publish.recording import KilledMidway, RecordingSink
from tests.support.pki import suite_pki
from tests.support.publish import Pipeline
from tests.support.s3 import Bucket, bucket_name
from tests.support.waiting import WAIT_S, within

CONTESTS = ["ppwp", "pdpr"]


@dataclass
class Consumer:
    """What a reader of the feed holds: the latest entry of each area and TPS, and where it is."""

    areas: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    tps: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    snapshot: int = 0  # the last snapshot applied whole
    pages: int = 0
    resets: list[int] = field(default_factory=list)

    def follow(self, site: Path | Callable[[str], bytes | None], page: str, until: int | None = None) -> None:
        """Apply pages from `page` on, until the next one is not there yet (or is of a snapshot after `until`).

        `site`: a site directory, or what reads a path of the site (None: not there)."""
        read = site if callable(site) else _directory_reader(site)
        while (body := read(page)) is not None:
            doc = json.loads(body)
            if until is not None and doc["snapshot"] > until:
                return
            if doc["part"] == 0 and doc["reset"]:
                self.areas.clear()
                self.tps.clear()
                self.resets.append(doc["snapshot"])
            for entry in doc["areas"]:
                self.areas[(entry["contest"], entry["kode"])] = entry
            for entry in doc["tps"]:
                self.tps[(entry["contest"], entry["kode"])] = entry
            self.pages += 1
            assert len(doc["areas"]) + len(doc["tps"]) <= feed.FEED_PAGE_ENTRIES
            if doc["part"] + 1 == doc["parts"]:
                self.snapshot = doc["snapshot"]
            page = doc["next"]


def _directory_reader(site: Path) -> Callable[[str], bytes | None]:
    return lambda path: (site / path).read_bytes() if (site / path).is_file() else None


def _published(site: Path, contest: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every totals file (by area code, '' for nasional) and every TPS file (by TPS code) of a contest."""
    totals = {"": json.loads((site / f"pemilu/hhcw/{contest}.json").read_bytes())}
    tps: dict[str, Any] = {}
    for path in (site / f"pemilu/hhcw/{contest}").rglob("*.json"):
        code = path.stem
        (tps if len(code) == 13 else totals)[code] = json.loads(path.read_bytes())
    return totals, tps


def _check_against_files(
    consumer: Consumer, site: Path, choices: dict[str, list[str]], contests: Sequence[str] = CONTESTS
) -> tuple[int, int]:
    areas_checked = tps_checked = 0
    for contest in contests:
        totals, tps_files = _published(site, contest)
        for code, doc in totals.items():
            entry = consumer.areas.get((contest, code))
            votes = {c: doc["chart"].get(c, 0) for c in choices[contest]}
            if entry is None:  # never changed since the reset: nothing counted there
                assert doc["progres"]["progres"] == 0 and not any(votes.values()), (contest, code)
                continue
            assert entry["votes"] == votes, (contest, code)
            assert (entry["progres"], entry["total"]) == (doc["progres"]["progres"], doc["progres"]["total"]), code
            areas_checked += 1
        for code, doc in tps_files.items():
            entry = consumer.tps.get((contest, code))
            if entry is None:
                assert doc["chart"] is None, (contest, code)
                continue
            assert (entry["status"] == "dihitung") == doc["status_suara"], (contest, code)
            assert (entry["status"] == "kosong") == (doc["chart"] is None), (contest, code)
            if doc["chart"] is not None:
                assert entry["votes"] == {c: doc["chart"][c] for c in choices[contest]}, (contest, code)
                adm = doc["administrasi"]
                if adm is not None:
                    assert entry["suara_sah"] == adm["suara_sah"], (contest, code)
            tps_checked += 1
    return areas_checked, tps_checked


def _bulk_rows(site: Path, contest: str) -> tuple[list[str], list[dict[str, str]]]:
    text = gzip.decompress((site / f"suara/unduh/{contest}.csv.gz").read_bytes()).decode()
    reader = csv.DictReader(io.StringIO(text))
    return list(reader.fieldnames or []), list(reader)


@pytest.fixture
async def publishing(pipeline: Pipeline) -> AsyncIterator[Pipeline]:
    """A publisher cycling every 0.2 s, as `suara publish run` would, after a first (full) cycle with no
    form yet; bulk files rewritten by every cycle."""
    pipeline.publisher.bulk_interval_s = 0.0
    assert await pipeline.cycle() is not None

    async def publish_loop() -> None:
        while True:
            await pipeline.publisher.cycle()
            await asyncio.sleep(0.2)  # publish's interval: a periodic loop, nothing to await

    task = asyncio.create_task(publish_loop())
    try:
        yield pipeline
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_consumer_of_the_feed_alone_ends_with_every_published_number_after_a_night_with_faults(
    publishing: Pipeline, monkeypatch: pytest.MonkeyPatch, record_property: Any
) -> None:
    pipeline = publishing
    monkeypatch.setattr(feed, "FEED_PAGE_ENTRIES", 7)  # snapshots span several pages
    monkeypatch.setattr(cycle, "CYCLE_CHANGES", 15)  # and the night many snapshots
    pki = suite_pki()
    config = Config(
        target=f"127.0.0.1:{pipeline.tally.app.port}",
        admin_target=f"127.0.0.1:{pipeline.tally.app.internal_port}",
        tls=pki.client_tls(),
        admin_tls=pki.client_tls(pki.credential("loadtest-admin", "admin")),
        admin_token="",
        site=str(pipeline.site),
        scale=0.05,
        concurrency=8,
        seed=17,
        contests=CONTESTS,
        sample_interval_s=0.2,
        settle_s=1.0,
        settle_timeout_s=120.0,
        snapshot_timeout_s=120.0,
    )
    report = await run_loadtest(config)
    assert report["verification"]["exact"], report["verification"]["mismatches"]
    await pipeline.cycle()  # whatever the loop had not published yet (None: nothing)
    site = pipeline.site
    pointer = json.loads((site / "suara/snapshot.json").read_bytes())

    head = json.loads((site / "suara/perubahan.json").read_bytes())
    # The feed begins with the first form's (full) cycle; a snapshot before it was the skeleton, with no page.
    assert head["newest"] == pointer["snapshot"]
    assert not any((site / f"suara/perubahan/{s}").exists() for s in range(1, head["oldest"]))
    whole = Consumer()
    whole.follow(site, head["oldest_page"])
    assert whole.snapshot == pointer["snapshot"] and whole.resets == [head["oldest"]]
    assert whole.pages > whole.snapshot, "a snapshot of more than 7 changes spans pages"
    areas_checked, tps_checked = _check_against_files(whole, site, pipeline.choices)
    assert areas_checked > 0 and tps_checked > 0
    for contest, oracle in report["oracle"].items():  # the load test's own oracle, beside the files
        assert whole.areas[(contest, "")]["progres"] == oracle["counted"]

    # A reader that held the state of a snapshot half-way through picks up from the page after it.
    held_at = whole.snapshot // 2
    halfway = Consumer()
    halfway.follow(site, head["oldest_page"], until=held_at)
    assert held_at > head["oldest"] and halfway.snapshot == held_at and halfway.areas != whole.areas
    resumed = copy.deepcopy(halfway)
    resumed.follow(site, f"suara/perubahan/{held_at + 1}/0.json")
    assert resumed.snapshot == whole.snapshot
    assert resumed.areas == whole.areas and resumed.tps == whole.tps

    # The bulk files: one row per TPS file, the same numbers, and the counted rows add up to each desa.
    index = json.loads((site / "suara/unduh.json").read_bytes())
    assert set(CONTESTS) <= set(index["files"])
    rows_checked = 0
    for contest in CONTESTS:
        totals, tps_files = _published(site, contest)
        columns, rows = _bulk_rows(site, contest)
        choices = pipeline.choices[contest]
        assert columns == [*index["columns"], *choices]
        assert {r["kode_tps"] for r in rows} == set(tps_files) and len(rows) == len(tps_files)
        assert index["files"][contest]["rows"] == len(rows)
        sums: dict[str, Counter[str]] = defaultdict(Counter)
        for row in rows:
            doc = tps_files[row["kode_tps"]]
            assert (row["status"] == "dihitung") == doc["status_suara"], row
            if doc["chart"] is None:
                assert row["status"] == "kosong" and row["versi"] == "0", row
                continue
            assert {c: int(row[c]) for c in choices} == {c: doc["chart"][c] for c in choices}, row
            if doc["administrasi"] is not None:
                assert int(row["suara_sah"]) == doc["administrasi"]["suara_sah"], row
            if row["status"] == "dihitung":
                for c in choices:
                    sums[row["kode_tps"][:10]][c] += int(row[c])
            rows_checked += 1
        for desa, votes in sums.items():
            assert {c: totals[desa]["chart"].get(c, 0) for c in choices} == {c: votes[c] for c in choices}, desa
    assert rows_checked > 0
    record_property(
        "figures",
        {
            "snapshots": whole.snapshot,
            "feed_pages": whole.pages,
            "areas_checked": areas_checked,
            "tps_checked": tps_checked,
            "bulk_rows_checked": rows_checked,
            "totals_vs_feed_mismatches": 0,
        },
    )


async def test_the_feed_and_the_bulk_file_in_a_bucket_are_what_the_directory_shows(
    pipeline: Pipeline, s3_endpoint: str, tmp_path: Path
) -> None:
    """Through the S3 sink (SeaweedFS): a consumer of the bucket's feed ends with the numbers of the
    directory a full cycle writes afterwards, and the bucket's bulk file holds that directory's TPS."""
    contest = "pkwkp"  # one province: a few hundred objects (see test_s3_publish.py)
    bucket = Bucket(s3_endpoint, bucket_name("feed", tmp_path))
    sink = S3Sink(bucket.name, "site/", endpoint_url=s3_endpoint, concurrency=8)
    s3 = pipeline.publisher_for(sink, (contest,))
    s3.bulk_interval_s = 0.0
    skeleton = await s3.cycle()  # the first, before any form: the skeleton, no feed page
    assert skeleton is not None
    rng = random.Random(8)
    for _ in range(3):
        await pipeline.random_night(rng, 15, contest=contest)
        await pipeline.delivered()
        assert await s3.cycle() is not None
    await s3.bulk_done()

    def read(path: str) -> bytes | None:
        try:
            return bucket.get(f"site/{path}").body
        except bucket.client.exceptions.NoSuchKey:
            return None

    head = json.loads(read("suara/perubahan.json") or b"null")
    consumer = Consumer()
    consumer.follow(read, head["oldest_page"])
    assert head["oldest"] == skeleton.snapshot + 1  # the first form's cycle, a reset from zero
    assert consumer.resets == [head["oldest"]] and consumer.snapshot == head["newest"] == head["oldest"] + 2
    page = bucket.get(f"site/{head['newest_page']}")
    assert page.cache_control == "public, max-age=31536000, immutable" and page.content_type == "application/json"

    directory = tmp_path / "directory"
    assert await pipeline.publisher_for(LocalSink(directory), (contest,)).cycle(full=True) is not None
    totals, tps_files = _published(directory, contest)
    choices = pipeline.choices[contest]
    assert {code for c, code in consumer.areas if c == contest} <= set(totals)
    for code, doc in totals.items():
        entry = consumer.areas.get((contest, code))
        votes = {c: doc["chart"].get(c, 0) for c in choices}
        if entry is None:
            assert doc["progres"]["progres"] == 0 and not any(votes.values()), code
        else:
            assert (entry["votes"], entry["progres"]) == (votes, doc["progres"]["progres"]), code
    bulk = bucket.get(f"site/suara/unduh/{contest}.csv.gz")
    assert bulk.content_type == "application/gzip" and bulk.content_encoding is None
    rows = list(csv.DictReader(io.StringIO(gzip.decompress(bulk.body).decode())))
    assert {r["kode_tps"] for r in rows} == set(tps_files)
    for row in rows:
        doc = tps_files[row["kode_tps"]]
        chart = {c: 0 for c in choices} if doc["chart"] is None else {c: doc["chart"][c] for c in choices}
        assert ({c: int(row[c]) for c in choices}, row["status"] == "dihitung") == (chart, doc["status_suara"]), row
    assert any(row["status"] == "dihitung" for row in rows)


class _DiesAtTheFeed(RecordingSink):
    """A publisher killed after committing its snapshot, before any of its feed pages is written."""

    async def write(self, files: Sequence[SiteFile]) -> None:
        if any(f.path.startswith("suara/perubahan") for f in files):
            raise KilledMidway("killed before the feed")
        await super().write(files)


async def test_a_publisher_killed_before_its_feed_pages_leaves_them_to_the_next_with_the_same_numbers(
    pipeline: Pipeline,
) -> None:
    site = pipeline.site
    skeleton = await pipeline.cycle()  # before any form: the skeleton, no feed page
    assert skeleton is not None and not (site / "suara/perubahan.json").exists()
    reset = skeleton.snapshot + 1  # the first form's full cycle
    rng = random.Random(21)
    await pipeline.random_night(rng, 20)
    assert await pipeline.cycle() is not None
    await pipeline.random_night(rng, 20)
    pipeline.publisher.sink = _DiesAtTheFeed(LocalSink(site))
    with pytest.raises(KilledMidway):
        await pipeline.cycle()
    killed = json.loads((site / "suara/snapshot.json").read_bytes())["snapshot"]
    head = json.loads((site / "suara/perubahan.json").read_bytes())
    assert head["newest"] == killed - 1 and not (site / f"suara/perubahan/{killed}").exists(), "nothing of it shows"

    await pipeline.random_night(rng, 10)
    await pipeline.delivered()
    restarted = pipeline.publisher_for(LocalSink(site))  # a new process: it knows the site only from its files
    result = await restarted.cycle()
    assert result is not None and result.snapshot == killed + 1
    head = json.loads((site / "suara/perubahan.json").read_bytes())
    assert (head["oldest"], head["newest"]) == (reset, killed + 1)
    consumer = Consumer()
    consumer.follow(site, head["oldest_page"])
    assert consumer.snapshot == killed + 1 and consumer.resets == [reset]
    areas_checked, tps_checked = _check_against_files(consumer, site, pipeline.choices, ("ppwp",))
    assert areas_checked > 0 and tps_checked > 0


async def test_a_first_state_too_large_to_list_is_a_reset_without_entries(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first snapshot with numbers lists them (tested above) only up to FROM_ZERO_ENTRIES; beyond,
    its reset carries none and a reader takes the bulk downloads and totals files as its baseline."""
    monkeypatch.setattr(feed, "FROM_ZERO_ENTRIES", 3)
    assert await pipeline.cycle() is not None  # the skeleton
    await pipeline.random_night(random.Random(5), 20)
    await pipeline.delivered()
    result = await pipeline.cycle()
    assert result is not None and result.full
    page = json.loads((pipeline.site / f"suara/perubahan/{result.snapshot}/0.json").read_bytes())
    assert page["reset"] and page["parts"] == 1 and page["areas"] == [] and page["tps"] == []


async def test_a_bulk_rewrite_holds_up_neither_the_next_cycles_nor_the_event_loop(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bulk file is formatted and compressed in a thread: while that thread is held, the next cycle
    runs to its end (on the event loop, which the bulk build would otherwise hold for seconds at full
    scale), and the rewrite due meanwhile follows, with the numbers of that later cycle. The oracle is
    what tally acknowledged (`pipeline.current`)."""
    contest = "pkwkp"
    publisher = pipeline.publisher
    publisher.contests = {contest: publisher.contests[contest]}
    publisher.bulk_interval_s = 0.0  # every cycle's rewrite is due
    building, release = threading.Event(), threading.Event()
    loop_thread = threading.get_ident()
    threads: set[int] = set()
    add = feed.BulkCsv.add

    def held(self: feed.BulkCsv, views: Sequence[Any]) -> None:
        threads.add(threading.get_ident())
        building.set()
        if not release.wait(WAIT_S):
            raise AssertionError("the test never released the bulk build")
        add(self, views)

    monkeypatch.setattr(feed.BulkCsv, "add", held)
    codes = pipeline.tally_codes(contest)
    await pipeline.submit(codes[0], contest)
    await pipeline.delivered()
    first = await publisher.cycle()
    assert first is not None
    await within(asyncio.to_thread(building.wait, WAIT_S), "the bulk build under way in its thread")
    # The build is held mid-way: a form arrives, and the next cycle publishes it all the same.
    await pipeline.submit(codes[1], contest)
    await pipeline.delivered()
    second = await within(publisher.cycle(), "a cycle while the bulk file is being built")
    assert second is not None and second.snapshot == first.snapshot + 1
    await pipeline.check_site(contests=(contest,))  # the cycle's files, every one, as the oracle says
    assert not (pipeline.site / f"suara/unduh/{contest}.csv.gz").exists(), "the build was held"
    release.set()
    await within(publisher.bulk_done(), "the bulk rewrites")
    assert threads and loop_thread not in threads

    index = json.loads((pipeline.site / "suara/unduh.json").read_bytes())
    assert index["snapshot"] == second.snapshot  # the rewrite due during the build followed it
    columns, rows = _bulk_rows(pipeline.site, contest)
    choices = pipeline.choices[contest]
    assert columns == [*feed.BULK_FIXED_COLUMNS, *choices]
    assert sorted(r["kode_tps"] for r in rows) == sorted(codes) and index["files"][contest]["rows"] == len(codes)
    for row in rows:
        accepted = pipeline.current.get((row["kode_tps"], contest))
        if accepted is None:
            assert (row["versi"], row["status"]) == ("0", "kosong"), row
            continue
        status = "karantina" if accepted.quarantined else "dihitung"
        assert (int(row["versi"]), row["status"]) == (accepted.form.version, status), row
        assert {c: int(row[c]) for c in choices} == dict(accepted.form.votes), row
    assert sum(row["status"] == "dihitung" for row in rows) == 2
