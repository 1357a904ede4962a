"""The whole pipeline for publish tests: real tally (with its relay), real aggregate, a real publisher.

`Pipeline.submit` sends signed forms through tally and keeps, in plain Python, what tally acknowledged:
the oracle every published file is checked against (tests/publish/oracle.py).
"""

from __future__ import annotations

import gc
import random
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import asyncpg
import grpc
import pytest

from services.aggregate.server import AggregateApp
from services.publish.cycle import CycleResult, Publisher
from services.publish.files import SiteFile
from services.publish.sinks.base import Sink
from services.publish.sinks.local import LocalSink
from services.tally.credentials import enroll_device
from suara.client.aggregate_stub import aggregate_stub
from suara.election.signing import DeviceKey
from suara.registry.catalog import fetch_contests
from suara.runtime.service_auth import ServiceAuthClientInterceptor, issue_service_credential
from suara.runtime.settings import Settings
from suara.v1 import form_pb2, tally_pb2
from tests.factories import consistent_form, jpeg, png, signed
from tests.publish.oracle import Accepted, Registry, compare, expected_site
from tests.tally.conftest import BASE_SETTINGS as TALLY_SETTINGS
from tests.tally.conftest import Tally, start_tally

SHM = Path("/dev/shm")
SHM_EXISTS = SHM.is_dir()


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
        try:
            response = await self.tally.stub.Submit(signed(await self.key(tps), form, photos))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
            return None
        if response.outcome in (tally_pb2.ACCEPTED, tally_pb2.QUARANTINED):
            previous = self.current.get((tps, contest))
            if previous is None or version > previous.form.version:
                self.current[(tps, contest)] = Accepted(
                    form_pb2.CHasilForm.FromString(form.SerializeToString()),
                    response.outcome == tally_pb2.QUARANTINED,
                )
            for p in photos:
                self.photos[hashlib.sha256(p).hexdigest()] = p
        return response

    def photo_types(self) -> dict[str, str]:
        return {sha: "image/png" if b.startswith(b"\x89PNG") else "image/jpeg" for sha, b in self.photos.items()}

    async def check_site(self, site: Path | None = None, contests: Sequence[str] = ("ppwp", "pdpr", "pkwkp")) -> None:
        """Every published file of these contests equals the oracle (tests/publish/oracle.py)."""
        registry = await Registry.read(self.db)
        for contest in contests:
            problems = compare(site or self.site, expected_site(registry, contest, self.current, self.photo_types()))
            assert not problems, f"{len(problems)} differences, first: " + "\n".join(problems[:5])

    async def delivered(self) -> None:
        """Until the relay has delivered everything tally acknowledged so far."""
        assert self.tally.app.relay is not None
        await self.tally.app.relay.wait_caught_up()

    async def cycle(self, **kwargs: bool) -> CycleResult | None:
        await self.delivered()
        return await self.publisher.cycle(**kwargs)

    def publisher_for(self, sink: Sink) -> Publisher:
        return Publisher(self.publisher.pool, sink, self.publisher.aggregate, self.publisher.tally,
                         self.publisher.contests)  # fmt: skip

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


class RecordingSink:
    """A LocalSink that also remembers every path written (to prove a cycle wrote only what changed),
    and can be told to die after N files (a publisher killed midway)."""

    def __init__(self, inner: LocalSink, die_after: int | None = None) -> None:
        self.inner = inner
        self.cheap_reads = inner.cheap_reads
        self.paths: list[str] = []
        self.die_after = die_after

    async def write(self, files: Sequence[SiteFile]) -> None:
        if self.die_after is not None and len(self.paths) + len(files) > self.die_after:
            keep = max(0, self.die_after - len(self.paths))
            await self.inner.write(files[:keep])
            self.paths.extend(f.path for f in files[:keep])
            raise KilledMidway(f"killed after {self.die_after} files")
        await self.inner.write(files)
        self.paths.extend(f.path for f in files)

    async def exists(self, path: str) -> bool:
        return await self.inner.exists(path)

    async def read(self, path: str) -> bytes | None:
        return await self.inner.read(path)

    async def sweep_temp(self) -> int:
        return await self.inner.sweep_temp()

    async def close(self) -> None:
        await self.inner.close()

    def describe(self) -> str:
        return f"recording {self.inner.describe()}"


class KilledMidway(Exception):
    pass


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server stands in for a real S3-compatible server (MinIO, AWS), none of which can run here."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
async def pipeline(db_url: str, db: asyncpg.Connection, tmp_path: Path) -> AsyncIterator[Pipeline]:
    writer = await issue_service_credential(db, "relay", "writer")
    reader = await issue_service_credential(db, "publish", "reader")
    writer.save(tmp_path / "relay.key.json")
    aggregate = await AggregateApp.create(Settings(aggregate_port=0, log_format="console"), db_url)
    await aggregate.start()
    tally = await start_tally(
        db_url,
        db,
        replace(
            TALLY_SETTINGS,
            relay_credential=str(tmp_path / "relay.key.json"),
            aggregate_address=f"127.0.0.1:{aggregate.port}",
        ),
    )
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{aggregate.port}", interceptors=[ServiceAuthClientInterceptor(reader)]
    )
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=4)
    # On tmpfs where there is one: these tests are about what is written, and a full cycle writes ~50k
    # files, which this machine's virtual disk takes ten times longer to create than memory does.
    site = Path(tempfile.mkdtemp(prefix="suara-site-", dir=SHM if SHM_EXISTS else tmp_path))
    publisher = Publisher(pool, LocalSink(site), aggregate_stub(channel), tally.stub, await fetch_contests(db))
    all_tps = [r["code"] for r in await db.fetch("SELECT code FROM registry.tps ORDER BY code")]
    p = Pipeline(tally, aggregate, channel, db, db_url, site, publisher, all_tps=all_tps)
    try:
        yield p
    finally:
        shutil.rmtree(site, ignore_errors=True)
        await pool.close()
        await channel.close()
        await tally.channel.close()
        await tally.app.stop(0.5)
        await p.aggregate.stop(0.5)  # the one serving now (a test may have replaced the first)
        # Stopped gRPC servers caught in reference cycles must be freed while this test's event loop still
        # runs: freed later, from another test's loop, grpc's AioServer.__dealloc__ can block for good.
        gc.collect()
