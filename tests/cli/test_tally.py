"""`suara tally serve` as a real process: it serves, answers, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc

from cli.embedded import free_port
from services.tally.credentials import enroll_device
from services.tally.server import SERVICE_NAME
from suara.client.stubs import tally_stub
from suara.election.signing import DeviceKey
from suara.runtime.settings import Settings
from suara.v1 import tally_pb2, tally_pb2_grpc
from tests.support.factories import consistent_form, signed
from tests.support.pki import suite_pki
from tests.support.processes import LogTail, running
from tests.support.waiting import CHANNEL_OPTIONS, poll_until, until_serving

EVENT_TIMEOUT_S = 10.0


@dataclass
class Served:
    proc: asyncio.subprocess.Process
    port: int
    stub: tally_pb2_grpc.TallyServiceAsyncStub
    log: LogTail
    channel: grpc.aio.Channel

    async def stop(self, grace_s: float) -> int:
        """SIGTERM, then the exit status, which must come within the grace period."""
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), grace_s)
        await self.log.finish()
        return code


@contextlib.asynccontextmanager
async def tally_process(env: dict[str, str], cwd: Path) -> AsyncIterator[Served]:
    port = free_port()
    async with (
        running("tally", "serve", "--port", str(port), env=env, cwd=cwd) as child,
        suite_pki().channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel,
    ):
        await until_serving(channel, SERVICE_NAME, check=child.assert_alive, detail=child.log.text)
        yield Served(child.proc, port, tally_stub(channel), child.log, channel)


async def _station(db: asyncpg.Connection) -> tuple[DeviceKey, list[str]]:
    tps = await db.fetchval("SELECT code FROM registry.tps ORDER BY code LIMIT 1")
    choices = [
        r["id"] for r in await db.fetch("SELECT id FROM registry.choice WHERE contest = 'ppwp' ORDER BY nomor_urut")
    ]
    key = DeviceKey.generate(tps)
    await enroll_device(db, key.device_id, tps, key.public_key, "test")
    return key, choices


async def test_serve_accepts_a_form_and_exits_0_on_sigterm(
    db: asyncpg.Connection, cli_env: dict[str, str], tmp_path: Path
) -> None:
    grace = Settings().shutdown_grace_s  # the documented default: the child is not told otherwise
    key, choices = await _station(db)
    async with tally_process({**cli_env, "SUARA_LOG_FORMAT": "json"}, tmp_path) as served:
        response = await served.stub.Submit(signed(key, consistent_form(key.tps, "ppwp", choices)))
        assert response.outcome == tally_pb2.OUTCOME_ACCEPTED
        stored = await db.fetchrow(
            "SELECT id, chain_position FROM tally.submission WHERE tps = $1 AND contest = 'ppwp'", key.tps
        )
        assert stored is not None
        assert (str(stored["id"]), stored["chain_position"]) == (
            response.receipt.submission_id,
            response.receipt.chain_position,
        )
        assert await served.stop(grace) == 0

    lines = [line for line in served.log.lines if line.strip()]
    events = served.log.events()
    assert len(events) == len(lines), f"SUARA_LOG_FORMAT=json, yet some stderr lines are not JSON:\n{lines}"
    assert all(e.get("service") == "suara-tally" for e in events)
    names = [e["event"] for e in events]
    assert "shutting_down" in names, names
    (shutting_down,) = (e for e in events if e["event"] == "shutting_down")
    assert shutting_down["grace_s"] == grace
    assert any(str(e.get("address", "")).endswith(f":{served.port}") for e in events), events
    assert names.index("shutting_down") < names.index("tally_stopped")


async def test_serve_logs_tally_serving_once_it_serves(
    db: asyncpg.Connection, cli_env: dict[str, str], tmp_path: Path
) -> None:
    async with tally_process({**cli_env, "SUARA_LOG_FORMAT": "json"}, tmp_path) as served:
        assert await served.stop(Settings().shutdown_grace_s) == 0
    names = [e["event"] for e in served.log.events()]
    assert "tally_serving" in names, f"tally_serving was never logged: {names}"
    assert names.index("tally_serving") < names.index("shutting_down")


async def test_sigterm_lets_a_call_blocked_on_the_chain_lock_finish_accepted(
    db_url: str, db: asyncpg.Connection, cli_env: dict[str, str], tmp_path: Path
) -> None:
    grace = Settings().shutdown_grace_s
    key, choices = await _station(db)
    blocker = await asyncpg.connect(db_url)
    try:
        async with tally_process({**cli_env, "SUARA_LOG_FORMAT": "json"}, tmp_path) as served:
            lock = blocker.transaction()
            await lock.start()
            await blocker.execute("SELECT 1 FROM tally.chain_head FOR UPDATE")
            request = signed(key, consistent_form(key.tps, "ppwp", choices))

            async def submit() -> tally_pb2.SubmitResponse:
                return await served.stub.Submit(request)

            call = asyncio.create_task(submit())

            # Until tally's commit waits on our lock: PostgreSQL offers nothing to await for that, so a
            # bounded poll of pg_blocking_pids.
            blocked_by_us = "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))"

            async def waiting_on_us() -> bool:
                return bool(await db.fetchval(blocked_by_us, blocker.get_server_pid()))

            def still_held() -> None:
                assert not call.done(), "the call finished although the chain head was locked"

            await poll_until(waiting_on_us, "tally waiting on the chain lock", EVENT_TIMEOUT_S, still_held)

            served.proc.send_signal(signal.SIGTERM)
            await served.log.wait_for_event("shutting_down", EVENT_TIMEOUT_S)
            assert not call.done()  # still held by our lock while the server drains
            await lock.rollback()

            response = await asyncio.wait_for(call, grace)
            assert response.outcome == tally_pb2.OUTCOME_ACCEPTED
            assert await asyncio.wait_for(served.proc.wait(), grace) == 0
    finally:
        await blocker.close()
    stored = await db.fetchval(
        "SELECT id FROM tally.submission WHERE chain_position = $1", response.receipt.chain_position
    )
    assert str(stored) == response.receipt.submission_id
