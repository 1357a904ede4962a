"""`suara tally serve` with tracing on, as an operator turns it on: OTEL_* variables, a collector.

The process's spans reach the collector by OTLP, the last of them on SIGTERM; health checks and the
queries it makes outside any call start no trace; a log line names the trace of the call it was
written in."""

from __future__ import annotations

import signal
from pathlib import Path

import asyncpg
import grpc
import pytest

from cli.embedded import free_port
from services.tally.credentials import enroll_device
from services.tally.server import SERVICE_NAME
from suara.client.stubs import tally_stub
from suara.election.signing import DeviceKey
from suara.v1 import tally_pb2
from tests.support.factories import consistent_form, signed
from tests.support.otlp import collector
from tests.support.pki import suite_pki
from tests.support.processes import running
from tests.support.waiting import CHANNEL_OPTIONS, until_serving

SUBMIT = "/suara.v1.TallyService/Submit"
CLIENT = 3  # OTLP's SPAN_KIND_CLIENT


async def test_a_traced_tally_sends_its_spans_to_the_collector_and_names_them_in_its_logs(
    db: asyncpg.Connection, cli_env: dict[str, str], tmp_path: Path
) -> None:
    tps = await db.fetchval("SELECT code FROM registry.tps ORDER BY code LIMIT 1")
    choices = [
        r["id"] for r in await db.fetch("SELECT id FROM registry.choice WHERE contest = 'ppwp' ORDER BY nomor_urut")
    ]
    key = DeviceKey.generate(tps)
    await enroll_device(db, key.device_id, tps, key.public_key, "test")
    port = free_port()
    with collector() as received:
        env = {**cli_env, **received.env(), "SUARA_LOG_FORMAT": "json"}
        async with (
            running("tally", "serve", "--port", str(port), env=env, cwd=tmp_path) as child,
            suite_pki().channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel,
        ):
            await until_serving(channel, SERVICE_NAME, check=child.assert_alive, detail=child.log.text)
            stub = tally_stub(channel)
            accepted = await stub.Submit(signed(key, consistent_form(tps, "ppwp", choices)))
            assert accepted.outcome == tally_pb2.OUTCOME_ACCEPTED
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Submit(tally_pb2.SubmitRequest())  # refused: an rpc_error log line in its span
            child.proc.send_signal(signal.SIGTERM)
            assert await child.proc.wait() == 0
            await child.log.finish()

    spans = received.received
    assert {r.service for r in spans} == {"suara-tally"}
    submits = received.named(SUBMIT)
    assert len(submits) == 2 and all(not r.span.parent_span_id for r in submits)  # the device did not trace
    (stored,) = [s for s in submits if [e.name for e in s.span.events] == ["suara.form"]]
    (refused,) = [s for s in submits if s is not stored]
    (commit,) = received.named("tally.commit")
    assert [link.span_id for link in commit.span.links] == [stored.span.span_id]
    assert not [r for r in spans if "grpc.health" in r.span.name], "health checks start no trace"
    assert not [r.span.name for r in spans if r.span.kind == CLIENT and not r.span.parent_span_id]

    (error,) = [e for e in child.log.events() if e["event"] == "rpc_error"]
    assert (error["trace_id"], error["span_id"]) == (refused.span.trace_id.hex(), refused.span.span_id.hex())
