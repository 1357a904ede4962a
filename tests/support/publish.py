"""The whole pipeline for publish tests: real tally (with its relay), real aggregate, a real publisher.

`Pipeline.submit` sends signed forms through tally and keeps, in plain Python, what tally acknowledged:
the oracle every published file is checked against (tests/support/oracles/publish.py).
"""

from __future__ import annotations

import contextlib
import gc
import random
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
import pytest

from services.aggregate.server import AggregateApp
from services.publish.cycle import CycleResult, Publisher
from services.publish.sinks.base import Sink
from services.publish.sinks.local import LocalSink
from services.tally.credentials import enroll_device
from suara.client.aggregate_stub import aggregate_stub
from suara.election.signing import DeviceKey
from suara.registry.catalog import fetch_contests
from suara.runtime.database import Database
from suara.runtime.settings import Settings
from suara.v1 import form_pb2, tally_pb2
from tests.support.aggregate import aggregate_settings
from tests.support.databases import as_service
from tests.support.factories import TEST_ELECTION, consistent_form, jpeg, png, signed
from tests.support.oracles.publish import Accepted, Registry, compare, expected_site
from tests.support.pki import suite_pki
from tests.support.processes import suara_env
from tests.support.tally import BASE_SETTINGS as TALLY_SETTINGS
from tests.support.tally import Tally, relaying, start_tally

SHM = Path("/dev/shm")
SHM_EXISTS = SHM.is_dir()
# Named by snapshot (the feed's pages), or as of their last rewrite (the bulk downloads, every few minutes):
# each publisher writes its own, so two publishers' sites differ in them (tests/publish/test_feed.py reads them).
PER_PUBLISHER = ("suara/perubahan", "suara/unduh")
RESENDS = 5  # a submission answered UNAVAILABLE is sent again, as a device would, this many times at most


@dataclass
class Pipeline:
    tally: Tally
    aggregate: AggregateApp
    channel: grpc.aio.Channel
    db: asyncpg.Connection
    db_url: str
    site: Path
    publisher: Publisher
    keys: dict[str, DeviceKey] = field(default_factory=dict)
    # (tps, contest) -> the current acknowledged form: the oracle's input
    current: dict[tuple[str, str], Accepted] = field(default_factory=dict)
    photos: dict[str, bytes] = field(default_factory=dict)  # sha256 -> bytes, of every photo sent
    others: list[Publisher] = field(default_factory=list)  # of publisher_for: their bulk rewrites stop with it

    @property
    def choices(self) -> dict[str, list[str]]:
        return self.tally.contests

    async def key(self, tps: str) -> DeviceKey:
        if tps not in self.keys:
            key = DeviceKey.generate(tps)
            await enroll_device(self.db, key.device_id, tps, key.public_key, "publish-test")
            self.keys[tps] = key
        return self.keys[tps]

    async def submit(
        self,
        tps: str,
        contest: str = "ppwp",
        version: int = 1,
        *,
        seed: int = 0,
        quarantined: bool = False,
        photos: Sequence[bytes] = (),
    ) -> tally_pb2.SubmitResponse | None:
        """None when tally refuses it as a conflict (same version, other numbers): the oracle is unchanged."""
        import hashlib

        form = consistent_form(tps, contest, self.choices[contest], version, seed=seed)
        if quarantined:
            form.suara_tidak_sah += 1  # valid + invalid ≠ total
        form.photo_sha256.extend(hashlib.sha256(p).hexdigest() for p in photos)
        request = signed(await self.key(tps), form, photos)
        resent = False
        for attempt in range(RESENDS):
            try:
                response = await self.tally.stub.Submit(request)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                    return None
                # tally's database busier than its commit deadline (a loaded machine): "may or may not be
                # stored"; a device sends the same bytes again, and so does this.
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == RESENDS - 1:
                    raise
                resent = True
        stored_earlier = resent and response.outcome == tally_pb2.OUTCOME_DUPLICATE
        if stored_earlier or response.outcome in (tally_pb2.OUTCOME_ACCEPTED, tally_pb2.OUTCOME_QUARANTINED):
            previous = self.current.get((tps, contest))
            if previous is None or version > previous.form.version:
                self.current[(tps, contest)] = Accepted(
                    form_pb2.CHasilForm.FromString(form.SerializeToString()),
                    quarantined if stored_earlier else response.outcome == tally_pb2.OUTCOME_QUARANTINED,
                )
            for p in photos:
                self.photos[hashlib.sha256(p).hexdigest()] = p
        return response

    def photo_types(self) -> dict[str, str]:
        return {sha: "image/png" if b.startswith(b"\x89PNG") else "image/jpeg" for sha, b in self.photos.items()}

    async def check_site(self, site: Path | None = None, contests: Sequence[str] = ("ppwp", "pdpr", "pkwkp")) -> None:
        """Every published file of these contests equals the oracle (tests/support/oracles/publish.py)."""
        registry = await Registry.read(self.db)
        for contest in contests:
            problems = compare(site or self.site, expected_site(registry, contest, self.current, self.photo_types()))
            assert not problems, f"{len(problems)} differences, first: " + "\n".join(problems[:5])

    async def publish_env(self, name: str, site: Path, tmp_path: Path) -> dict[str, str]:
        """The environment of a `suara publish run` child publishing this pipeline to `site`: a reader
        credential `name` (issued once, kept in `tmp_path`), state in `tmp_path`/state, JSON logs."""
        credential = suite_pki().bundle(name, "reader")
        return suara_env(
            DATABASE_URL=self.db_url,
            SUARA_DATA_DIR=tmp_path / "state",
            SUARA_SITE_DIR=site,
            SUARA_AGGREGATE_ADDRESS=f"127.0.0.1:{self.aggregate.internal_port}",
            SUARA_TALLY_ADDRESS=f"127.0.0.1:{self.tally.app.internal_port}",
            SUARA_PUBLISH_CREDENTIAL=credential,
            SUARA_PUBLISH_INTERVAL_S="0.05",
            SUARA_LOG_FORMAT="json",
        )

    async def delivered(self) -> None:
        """Until the relay has delivered everything tally acknowledged so far."""
        assert self.tally.app.relay is not None
        await self.tally.app.relay.wait_caught_up()

    async def cycle(self, **kwargs: bool) -> CycleResult | None:
        """A cycle of the publisher, once the relay delivered everything, and the bulk rewrite it started, if
        any (it runs beside the next cycles in `suara publish run`)."""
        await self.delivered()
        result = await self.publisher.cycle(**kwargs)
        await self.publisher.bulk_done()
        return result

    def publisher_for(self, sink: Sink, contests: Sequence[str] | None = None) -> Publisher:
        """Another publisher of this pipeline, writing to `sink`: of every contest, or of `contests` only."""
        chosen = self.publisher.contests if contests is None else {c: self.publisher.contests[c] for c in contests}
        other = Publisher(self.publisher.pool, sink, self.publisher.aggregate, self.publisher.tally, chosen)
        self.others.append(other)
        return other

    async def random_night(self, rng: random.Random, n: int, contest: str = "ppwp") -> None:
        """`n` submissions over random TPS: corrections, stale versions, quarantine and its correction, photos."""
        codes = self.tally_codes(contest)
        for _ in range(n):
            tps = rng.choice(codes[: max(20, len(codes) // 10)])  # a subset, so corrections happen
            version = rng.randint(1, 4)
            photos = [rng.choice((jpeg, png))(rng.randbytes(4)) for _ in range(rng.choice((0, 0, 1, 3)))]
            await self.submit(tps, contest, version, seed=rng.randint(0, 3), quarantined=rng.random() < 0.15,
                              photos=photos)  # fmt: skip

    def tally_codes(self, contest: str) -> list[str]:
        scope = {"pkwkp": "31"}.get(contest, "")
        return [c for c in self.all_tps if c.startswith(scope)]

    all_tps: list[str] = field(default_factory=list)


@contextlib.contextmanager
def scratch_site(prefix: str, elsewhere: Path | None = None) -> Iterator[Path]:
    """A new, empty site directory, removed afterwards: on tmpfs where there is one, else in `elsewhere`
    (by default the system's temporary directory).

    These tests are about what is written, and a full cycle writes tens of thousands of files, which a
    virtual disk is much slower to create than memory."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=SHM if SHM_EXISTS else elsewhere))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def site() -> Iterator[Path]:
    """A site directory of the test's own, for a publisher other than the pipeline's."""
    with scratch_site("suara-test-site-") as path:
        yield path


@pytest.fixture
async def pipeline(db_url: str, db: asyncpg.Connection, tmp_path: Path) -> AsyncIterator[Pipeline]:
    async with open_pipeline(db_url, db, tmp_path) as p:
        yield p


@contextlib.asynccontextmanager
async def open_pipeline(
    db_url: str,
    db: asyncpg.Connection,
    tmp_path: Path,
    tally_settings: Settings = TALLY_SETTINGS,
    *,
    election: str = TEST_ELECTION,
) -> AsyncIterator[Pipeline]:
    """The `pipeline` fixture's pipeline, with a tally of `tally_settings` (another photo store, say); the
    relay's and publish's certificates for `election` (the registry's)."""
    pki = suite_pki()
    aggregate = await AggregateApp.create(aggregate_settings(0), as_service(db_url, "aggregate"))
    await aggregate.start()
    own = "" if election == TEST_ELECTION else f"-{election}"  # the suite issues one certificate per name
    tally = await start_tally(
        db_url,
        db,
        relaying(tally_settings, pki.bundle(f"relay{own}", "writer", election), f"127.0.0.1:{aggregate.internal_port}"),
    )
    channel = pki.channel(f"127.0.0.1:{aggregate.internal_port}", pki.credential(f"publish{own}", "reader", election))
    pool = Database(await asyncpg.create_pool(as_service(db_url, "publish"), min_size=1, max_size=4))
    all_tps = [r["code"] for r in await db.fetch("SELECT code FROM registry.tps ORDER BY code")]
    with scratch_site("suara-site-", tmp_path) as site:
        publisher = Publisher(pool, LocalSink(site), aggregate_stub(channel), tally.stub, await fetch_contests(db))
        p = Pipeline(tally, aggregate, channel, db, db_url, site, publisher, all_tps=all_tps)
        try:
            yield p
        finally:
            for publisher in [p.publisher, *p.others]:
                await publisher.stop_bulk()
            await pool.close()
            await channel.close()
            await tally.channel.close()
            await tally.app.stop(0.5)
            await p.aggregate.stop(0.5)  # the one serving now (a test may have replaced the first)
            # Stopped gRPC servers caught in reference cycles must be freed while this test's event loop still
            # runs: freed later, from another test's loop, grpc's AioServer.__dealloc__ can block for good.
            gc.collect()
