"""PostgreSQL crashed or frozen under load: nothing acknowledged is lost, and nobody hangs.

These tests run their own embedded PostgreSQL so they can crash it (`pg_ctl
stop -m immediate`, as a power cut would) or freeze it (SIGSTOP on every
server process, as a network partition or a stalled disk looks to tally)
while submitters keep sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cli.db import migrate_url
from cli.embedded import EmbeddedPostgres
from services.tally.audit import verify_chain
from services.tally.credentials import enroll_device
from services.tally.server import TallyApp
from suara.client import service_names
from suara.client.stubs import tally_stub
from suara.election.checks import MAX_VERSION
from suara.election.signing import DeviceKey
from suara.registry.loader import load_registry
from suara.v1 import tally_pb2
from tests.support.factories import TEST_ELECTION, consistent_form, signed
from tests.support.pki import suite_pki
from tests.support.tally import BASE_SETTINGS, CHAIN_KEY, with_tally
from tests.support.waiting import within

ACKS_BEFORE_FAULT = 150
REFUSALS_DURING_FAULT = 30
ACKS_AFTER_RECOVERY = 150
DEADLINE_S = 1.0  # what tally is configured with: the bound on every call's database work


@dataclass
class Rig:
    """A database, a tally and eight submitters; what they were told is kept apart from the server."""

    server: EmbeddedPostgres
    url: str
    channel: grpc.aio.Channel
    acks: dict[tuple[str, int], tally_pb2.Receipt] = field(default_factory=dict)
    payload_sha: dict[tuple[str, int], str] = field(default_factory=dict)
    unavailable_s: list[float] = field(default_factory=list)
    other_errors: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    workers: list[asyncio.Task[None]] = field(default_factory=list)

    async def stop_submitters(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.workers)

    async def until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self.changed.clear()
            await within(self.changed.wait(), "another reply to the submitters")

    async def serving_again(self) -> None:
        watch = health_pb2_grpc.HealthStub(self.channel).Watch(
            health_pb2.HealthCheckRequest(service=service_names.TALLY.full_name)
        )

        async def serving() -> None:
            async for update in watch:  # tally recovers by itself: nobody restarts it
                if update.status == health_pb2.HealthCheckResponse.SERVING:
                    return

        await within(serving(), "tally SERVING again")
        watch.cancel()

    async def check_nothing_acknowledged_was_lost(self) -> None:
        assert self.other_errors == []
        conn = await asyncpg.connect(self.url)
        try:
            rows = await conn.fetch(
                "SELECT tps, version, id, payload_sha256, chain_position, chain_hash FROM tally.submission"
            )
            stored = {(r["tps"], r["version"]): r for r in rows}
            for form_key, receipt in self.acks.items():
                row = stored.get(form_key)
                assert row is not None, f"acknowledged form {form_key} was lost"
                assert str(row["id"]) == receipt.submission_id
                assert bytes(row["payload_sha256"]).hex() == receipt.payload_sha256 == self.payload_sha[form_key]
                link = (row["chain_position"], bytes(row["chain_hash"]).hex())
                assert link == (receipt.chain_position, receipt.chain_hash)
            report = await verify_chain(conn)
            assert report.ok, report.problems
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def load_rig(tmp_path: Path) -> AsyncIterator[Rig]:
    server = EmbeddedPostgres(tmp_path / "pgdata")
    url = server.start()
    app: TallyApp | None = None
    rig: Rig | None = None
    try:
        await migrate_url(url)
        conn = await asyncpg.connect(url)
        await load_registry(conn, synthetic_scale=0.001, seed=3, election_id=TEST_ELECTION)
        codes = [r["code"] for r in await conn.fetch("SELECT code FROM registry.tps ORDER BY code LIMIT 40")]
        rows = await conn.fetch("SELECT id FROM registry.choice WHERE contest = 'ppwp' ORDER BY nomor_urut")
        choices = [r["id"] for r in rows]
        keys = [DeviceKey.generate(code) for code in codes]
        for key in keys:
            await enroll_device(conn, key.device_id, key.tps, key.public_key, "outage-test")
        await conn.close()

        # Forty devices stand in for a night's thousands: each sends far more than a real device, so the
        # per-device budget (what test_rate_limits.py covers) is lifted here.
        settings = with_tally(
            BASE_SETTINGS, commit_wait_s=DEADLINE_S, retry_after_ms=50, device_burst=1_000_000, device_rate_per_min=1e6
        )
        app = await TallyApp.create(settings, url, CHAIN_KEY)
        await app.start()
        channel = suite_pki().channel(f"127.0.0.1:{app.port}")
        stub = tally_stub(channel)
        rig = Rig(server, url, channel)

        async def submitter(my_keys: list[DeviceKey]) -> None:
            version = {k.tps: 1 for k in my_keys}
            while not rig.stop.is_set():
                if all(v > MAX_VERSION for v in version.values()):
                    return  # every form corrected as often as the domain allows: this submitter is done
                for key in my_keys:
                    if version[key.tps] > MAX_VERSION:
                        continue
                    request = signed(key, consistent_form(key.tps, "ppwp", choices, version[key.tps]))
                    started = time.perf_counter()
                    try:
                        response = await stub.Submit(request, timeout=30)
                    except grpc.aio.AioRpcError as err:
                        if err.code() == grpc.StatusCode.UNAVAILABLE:
                            rig.unavailable_s.append(time.perf_counter() - started)
                            rig.changed.set()
                            await asyncio.sleep(0.05)  # the server's retry-after hint
                            continue  # resend the same form: always safe
                        rig.other_errors.append(f"{err.code()}: {err.details()}")
                        continue
                    assert response.outcome in (tally_pb2.OUTCOME_ACCEPTED, tally_pb2.OUTCOME_DUPLICATE)
                    rig.acks[(key.tps, version[key.tps])] = response.receipt
                    rig.payload_sha[(key.tps, version[key.tps])] = hashlib.sha256(request.form.payload).hexdigest()
                    rig.changed.set()
                    version[key.tps] += 1

        rig.workers = [asyncio.create_task(submitter(keys[i::8])) for i in range(8)]
        yield rig
        await rig.stop_submitters()
        await channel.close()
    finally:
        if rig is not None:
            rig.stop.set()
            for w in rig.workers:
                w.cancel()
        if app is not None:
            await app.stop(0.5)
        server.stop("immediate")


def _server_processes(server: EmbeddedPostgres) -> list[psutil.Process]:
    postmaster = psutil.Process(int((server.pgdata / "postmaster.pid").read_text().split()[0]))
    return [postmaster, *postmaster.children(recursive=True)]


@pytest.mark.slow
async def test_database_crash_under_load_loses_nothing_and_never_hangs(tmp_path: Path) -> None:
    async with load_rig(tmp_path) as rig:
        await rig.until(lambda: len(rig.acks) >= ACKS_BEFORE_FAULT)
        await asyncio.to_thread(rig.server.stop, "immediate")
        await rig.until(lambda: len(rig.unavailable_s) >= REFUSALS_DURING_FAULT)
        acks_at_restart = len(rig.acks)
        await asyncio.to_thread(rig.server.start)
        await rig.serving_again()
        await rig.until(lambda: len(rig.acks) >= acks_at_restart + ACKS_AFTER_RECOVERY)
        await rig.stop_submitters()
        assert max(rig.unavailable_s) < DEADLINE_S, "a refused database must be reported at once, not after a hang"
        await rig.check_nothing_acknowledged_was_lost()


@pytest.mark.slow
async def test_frozen_database_gets_unavailable_within_the_deadline(tmp_path: Path) -> None:
    async with load_rig(tmp_path) as rig:
        await rig.until(lambda: len(rig.acks) >= ACKS_BEFORE_FAULT)
        frozen = _server_processes(rig.server)
        for proc in frozen:
            os.kill(proc.pid, signal.SIGSTOP)
        try:
            await rig.until(lambda: len(rig.unavailable_s) >= REFUSALS_DURING_FAULT)
        finally:
            for proc in frozen:
                os.kill(proc.pid, signal.SIGCONT)
        acks_at_thaw = len(rig.acks)
        await rig.serving_again()
        await rig.until(lambda: len(rig.acks) >= acks_at_thaw + ACKS_AFTER_RECOVERY)
        await rig.stop_submitters()
        # A hung database answers nothing, so the bound is tally's deadline plus scheduling slack.
        assert max(rig.unavailable_s) < DEADLINE_S + 0.5, sorted(rig.unavailable_s)[-5:]
        await rig.check_nothing_acknowledged_was_lost()
