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


TALLY_PROCESSES = int(os.environ.get("BENCH_TALLY_PROCESSES", "2"))
CHANNELS = 4  # connections, spread evenly over the tally processes


async def _drive(call: Any, items: list[Any], concurrency: int) -> Rate:
    """`call`: one callable, or a list of them (one per channel) that workers take in turn."""
    queue = list(reversed(items))
    calls = call if isinstance(call, list) else [call]

    async def worker(i: int) -> None:
        target = calls[i % len(calls)]
        while queue:
            await target(queue.pop())

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
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


def _cpu_s(procs: list[subprocess.Popen[str]]) -> float:
    """CPU seconds the server processes have used: what each call costs the server, whatever the client does."""
    import psutil

    return sum(sum(psutil.Process(p.pid).cpu_times()[:2]) for p in procs)


def _own() -> list[tuple[str, int]]:
    """A channel of its own: gRPC would otherwise share one connection among channels to one address."""
    return [("grpc.use_local_subchannel_pool", 1)]


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

    # A port per process, not one shared port: SO_REUSEPORT hashes 4 connections onto 2 processes
    # unevenly (all on one, 1 run in 8), which made runs differ by a third.
    ports = [free_port() for _ in range(TALLY_PROCESSES)]
    env = {**os.environ, "DATABASE_URL": db_url, "SUARA_LOG_LEVEL": "info", "SUARA_LOG_FORMAT": "json"}
    env["SUARA_DB_POOL_SIZE"] = "4"
    suara = str(Path(sys.executable).parent / "suara")
    tallies = [
        subprocess.Popen(  # noqa: ASYNC220  (started once, before anything is measured)
            [suara, "tally", "serve", "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True
        )
        for port in ports
    ]
    echo_port = free_port()
    echo = _spawn([sys.executable, "-m", "bench.echo_server", str(echo_port), "180"], env, "ready")
    try:
        for port in ports:
            await _wait_serving(f"127.0.0.1:{port}")
        echo_channels = [grpc.aio.insecure_channel(f"127.0.0.1:{echo_port}", options=_own()) for _ in range(CHANNELS)]
        echo_calls: list[Any] = [c.unary_unary(METHOD) for c in echo_channels]
        payload = b"y" * request_size
        await _drive(echo_calls, [payload] * 200, concurrency)  # warm-up
        cpu = _cpu_s([echo])
        echo_rate = await _drive(echo_calls, [payload] * forms, concurrency)
        echo_cpu = _cpu_s([echo]) - cpu
        for c in echo_channels:
            await c.close()
        channels = [
            grpc.aio.insecure_channel(f"127.0.0.1:{ports[i % len(ports)]}", options=_own()) for i in range(CHANNELS)
        ]
        for c in channels:
            await c.channel_ready()
        try:
            stubs = [tally_stub(c) for c in channels]
            cpu = _cpu_s(tallies)
            submit_rate = await _drive([s.Submit for s in stubs], unary, concurrency)
            tally_cpu = _cpu_s(tallies) - cpu
            conn = await asyncpg.connect(db_url)
            commits = await conn.fetchval("SELECT count(DISTINCT received_at) FROM tally.submission")  # one per batch
            await conn.close()
            chunks = [tally_pb2.SubmitBatchRequest(items=batched[i : i + 500]) for i in range(0, len(batched), 500)]
            batch_rate = await _drive([s.SubmitBatch for s in stubs], chunks, 2)
        finally:
            for c in channels:
                await c.close()
    finally:
        for t in tallies:
            t.terminate()
        echo.terminate()
        tally_log = "".join(t.communicate(timeout=30)[1] for t in tallies)
        echo.wait(30)
    stats = [json.loads(line) for line in tally_log.splitlines() if "group_commit_stats" in line]
    return {
        "echo.calls_per_s": round(echo_rate.per_s, 1),
        "ingest.submit_per_s": round(submit_rate.per_s, 1),
        "ingest.ratio_vs_echo": round(submit_rate.per_s / echo_rate.per_s, 3),
        "echo.server_cpu_us_per_call": round(echo_cpu / forms * 1e6),
        "ingest.tally_cpu_us_per_form": round(tally_cpu / forms * 1e6),  # PostgreSQL's share not included
        "ingest.forms_per_commit": round(forms / commits, 1),
        "ingest.mean_commit_ms": round(sum(s["mean_write_ms"] for s in stats) / len(stats), 2) if stats else None,
        "ingest.forms_per_process": [s["forms"] for s in stats],  # unary and batch phases together
        "batch.forms_per_s": round(len(batched) / batch_rate.seconds, 1),
        "request_bytes": request_size,
        "concurrency": concurrency,
        "forms": forms,
        "tally_processes": TALLY_PROCESSES,
    }
