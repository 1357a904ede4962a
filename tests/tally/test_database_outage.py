"""PostgreSQL stopped under load and restarted: nothing acknowledged is lost, nobody hangs.

This test runs its own embedded PostgreSQL so it can crash it (`pg_ctl stop -m
immediate`, as a power cut would) while submitters keep sending.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.tally.audit import verify_chain
from services.tally.credentials import enroll_device
from services.tally.server import TallyApp
from suara.cli.db import migrate_url
from suara.client.stubs import tally_stub
from suara.election.signing import DeviceKey
from suara.registry.loader import load_registry
from suara.runtime.embedded import EmbeddedPostgres
from suara.v1 import tally_pb2
from tests.factories import consistent_form, signed
from tests.tally.conftest import BASE_SETTINGS

ACKS_BEFORE_CRASH = 150
REFUSALS_DURING_OUTAGE = 30
ACKS_AFTER_RECOVERY = 150


@dataclass
class Ledger:
    """What the submitters were told, kept independently of the server."""

    acks: dict[tuple[str, int], tally_pb2.Receipt] = field(default_factory=dict)
    payload_sha: dict[tuple[str, int], str] = field(default_factory=dict)
    unavailable_s: list[float] = field(default_factory=list)
    other_errors: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.mark.slow
async def test_database_crash_under_load_loses_nothing_and_never_hangs(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pgdata")
    url = server.start()
    app: TallyApp | None = None
    try:
        await migrate_url(url)
        conn = await asyncpg.connect(url)
        await load_registry(conn, synthetic_scale=0.001, seed=3)
        codes = [r["code"] for r in await conn.fetch("SELECT code FROM registry.tps ORDER BY code LIMIT 40")]
        choices = [
            r["id"]
            for r in await conn.fetch("SELECT id FROM registry.choice WHERE contest = 'ppwp' ORDER BY nomor_urut")
        ]
        keys = [DeviceKey.generate(code) for code in codes]
        for key in keys:
            await enroll_device(conn, key.device_id, key.tps, key.public_key, "outage-test")
        await conn.close()

        app = await TallyApp.create(replace(BASE_SETTINGS, commit_wait_s=3.0, retry_after_ms=50), url)
        await app.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
        stub = tally_stub(channel)
        ledger = Ledger()
        stop = asyncio.Event()

        async def submitter(my_keys: list[DeviceKey]) -> None:
            version = {k.tps: 1 for k in my_keys}
            while not stop.is_set():
                for key in my_keys:
                    form = consistent_form(key.tps, "ppwp", choices, version[key.tps])
                    request = signed(key, form)
                    started = time.perf_counter()
                    try:
                        response = await stub.Submit(request, timeout=10)
                    except grpc.aio.AioRpcError as err:
                        elapsed = time.perf_counter() - started
                        if err.code() == grpc.StatusCode.UNAVAILABLE:
                            ledger.unavailable_s.append(elapsed)
                            ledger.changed.set()
                            await asyncio.sleep(0.05)  # the server's retry-after hint
                            continue  # resend the same form: always safe
                        ledger.other_errors.append(f"{err.code()}: {err.details()}")
                        continue
                    assert response.outcome in (tally_pb2.ACCEPTED, tally_pb2.DUPLICATE)
                    ledger.acks[(key.tps, version[key.tps])] = response.receipt
                    ledger.payload_sha[(key.tps, version[key.tps])] = hashlib.sha256(request.form.payload).hexdigest()
                    ledger.changed.set()
                    version[key.tps] += 1

        async def until(condition: Callable[[], bool]) -> None:
            while not condition():
                ledger.changed.clear()
                await asyncio.wait_for(ledger.changed.wait(), 30)

        workers = [asyncio.create_task(submitter(keys[i::8])) for i in range(8)]
        await until(lambda: len(ledger.acks) >= ACKS_BEFORE_CRASH)
        await asyncio.to_thread(server.stop, "immediate")
        await until(lambda: len(ledger.unavailable_s) >= REFUSALS_DURING_OUTAGE)
        acks_at_restart = len(ledger.acks)
        await asyncio.to_thread(server.start)
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service="suara.v1.Tally"))
        async for update in watch:  # recovers by itself: no restart of tally
            if update.status == health_pb2.HealthCheckResponse.SERVING:
                break
        watch.cancel()
        await until(lambda: len(ledger.acks) >= acks_at_restart + ACKS_AFTER_RECOVERY)
        stop.set()
        await asyncio.gather(*workers)
        await channel.close()

        assert ledger.other_errors == []
        assert max(ledger.unavailable_s) < 1.0, "UNAVAILABLE must come within a second, not after a hang"

        check = await asyncpg.connect(url)
        try:
            rows = await check.fetch(
                "SELECT tps, version, id, payload_sha256, chain_position, chain_hash FROM tally.submission"
            )
            stored = {(r["tps"], r["version"]): r for r in rows}
            for form_key, receipt in ledger.acks.items():
                row = stored.get(form_key)
                assert row is not None, f"acknowledged form {form_key} was lost"
                assert str(row["id"]) == receipt.submission_id
                assert bytes(row["payload_sha256"]).hex() == receipt.payload_sha256 == ledger.payload_sha[form_key]
                assert (row["chain_position"], bytes(row["chain_hash"]).hex()) == (
                    receipt.chain_position,
                    receipt.chain_hash,
                )
            report = await verify_chain(check)
            assert report.ok, report.problems
        finally:
            await check.close()
    finally:
        if app is not None:
            await app.stop(0.5)
        server.stop("immediate")
