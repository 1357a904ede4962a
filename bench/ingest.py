"""Ingest: Submit throughput (signed, validated, committed) against a bare echo server, and SubmitBatch forms/s.

tally runs as its own process (`suara tally serve`), as in production; the
client runs here with pre-signed requests so it measures the server, and the
echo baseline gets the same client, concurrency and message sizes.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from bench.echo_server import METHOD
from suara.client.stubs import tally_stub
from suara.election.signing import DeviceKey
from suara.runtime.embedded import free_port
from suara.v1 import tally_pb2
from tests.factories import consistent_form, signed


@dataclass
class Rate:
    calls: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.calls / self.seconds


async def _drive(call: Any, items: list[Any], concurrency: int) -> Rate:
    queue = list(reversed(items))

    async def worker() -> None:
        while queue:
            await call(queue.pop())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Rate(len(items), time.perf_counter() - started)


def _spawn(args: list[str], env: dict[str, str], ready: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # block until the child says it serves
        if ready in line:
            return proc
    raise RuntimeError(f"{args} exited before serving")


async def _wait_serving(address: str) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        await channel.channel_ready()
        stub = health_pb2_grpc.HealthStub(channel)
        await stub.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True)


async def run(db_url: str, *, forms: int, concurrency: int) -> dict[str, float]:
    conn = await asyncpg.connect(db_url)
    tps = [r["code"] for r in await conn.fetch("SELECT code FROM registry.tps ORDER BY code LIMIT $1", 2 * forms)]
    choices = [
        r["id"] for r in await conn.fetch("SELECT id FROM registry.choice WHERE contest='ppwp' ORDER BY nomor_urut")
    ]
    keys = [DeviceKey.generate(code) for code in tps]
    await conn.copy_records_to_table(
        "device",
        schema_name="tally",
        records=[(k.device_id, k.tps, k.public_key, "bench") for k in keys],
        columns=["device_id", "tps", "public_key", "label"],
    )
    await conn.close()
    unary = [signed(k, consistent_form(k.tps, "ppwp", choices)) for k in keys[:forms]]
    batched = [signed(k, consistent_form(k.tps, "ppwp", choices)) for k in keys[forms:]]
    request_size = sum(len(r.SerializeToString()) for r in unary) // len(unary)

    port = free_port()
    env = {**os.environ, "DATABASE_URL": db_url, "SUARA_LOG_LEVEL": "info", "SUARA_LOG_FORMAT": "json"}
    suara = str(Path(sys.executable).parent / "suara")
    tally = subprocess.Popen(  # noqa: ASYNC220  (started once, before anything is measured)
        [suara, "tally", "serve", "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True
    )
    echo_port = free_port()
    echo = _spawn([sys.executable, "-m", "bench.echo_server", str(echo_port), "180"], env, "ready")
    try:
        await _wait_serving(f"127.0.0.1:{port}")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{echo_port}") as channel:
            echo_call: Any = channel.unary_unary(METHOD)
            payload = b"y" * request_size
            await _drive(echo_call, [payload] * 200, concurrency)  # warm-up
            echo_rate = await _drive(echo_call, [payload] * forms, concurrency)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = tally_stub(channel)
            submit_rate = await _drive(stub.Submit, unary, concurrency)
            conn = await asyncpg.connect(db_url)
            commits = await conn.fetchval("SELECT count(DISTINCT received_at) FROM tally.submission")  # one per batch
            await conn.close()
            chunks = [tally_pb2.SubmitBatchRequest(items=batched[i : i + 500]) for i in range(0, len(batched), 500)]
            batch_rate = await _drive(stub.SubmitBatch, chunks, 2)
    finally:
        tally.terminate()
        echo.terminate()
        _, tally_log = tally.communicate(timeout=30)
        echo.wait(30)
    stats = [json.loads(line) for line in tally_log.splitlines() if "group_commit_stats" in line]
    return {
        "echo.calls_per_s": round(echo_rate.per_s, 1),
        "ingest.submit_per_s": round(submit_rate.per_s, 1),
        "ingest.ratio_vs_echo": round(submit_rate.per_s / echo_rate.per_s, 3),
        "ingest.forms_per_commit": round(forms / commits, 1),
        "ingest.mean_commit_ms": stats[0]["mean_write_ms"] if stats else None,
        "batch.forms_per_s": round(len(batched) / batch_rate.seconds, 1),
        "request_bytes": request_size,
        "concurrency": concurrency,
        "forms": forms,
    }
