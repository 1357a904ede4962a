"""The service around the API: health, reflection, overload, graceful shutdown, logs."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from suara.client import service_names
from suara.v1 import tally_pb2
from tests.support.factories import consistent_form, signed
from tests.support.tally import BASE_SETTINGS, Tally, start_tally, with_tally
from tests.support.waiting import poll_until


async def _health(channel: grpc.aio.Channel, service: str = service_names.TALLY.full_name) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
    return int(response.status)


async def test_health_and_reflection(tally: Tally) -> None:
    assert await _health(tally.channel) == health_pb2.HealthCheckResponse.SERVING
    assert await _health(tally.channel, "") == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(tally.channel)

    async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for response in stub.ServerReflectionInfo(requests()):
        names = {s.name for s in response.list_services_response.service}
        assert {"suara.v1.TallyService", "grpc.health.v1.Health"} <= names


class ChainLock:
    """Hold tally's chain-head row lock from outside, so commits wait until released."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url

    async def __aenter__(self) -> ChainLock:
        self.conn = await asyncpg.connect(self.db_url)
        self.tx = self.conn.transaction()
        await self.tx.start()
        await self.conn.execute("SELECT 1 FROM tally.chain_head FOR UPDATE")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.tx.rollback()
        await self.conn.close()

    async def waiters(self) -> int:
        return int(
            await self.conn.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'")
        )


# Lock waits and counters inside tally have no event to await: a bounded poll (tests/support/waiting.py).
UNTIL_S = 10.0


async def test_overload_is_refused_with_a_retry_hint(db_url: str, db: asyncpg.Connection) -> None:
    t = await start_tally(db_url, db, with_tally(BASE_SETTINGS, max_in_flight=2, retry_after_ms=321))
    try:
        stations = [await t.station() for _ in range(3)]
        requests = [signed(s.key, consistent_form(s.tps, "ppwp", t.contests["ppwp"])) for s in stations]
        async with ChainLock(db_url) as lock:
            first = asyncio.ensure_future(t.stub.Submit(requests[0]))
            second = asyncio.ensure_future(t.stub.Submit(requests[1]))

            async def two_in_flight() -> bool:
                return t.app.service.in_flight.current == 2

            await poll_until(two_in_flight, "two calls in flight", UNTIL_S)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await t.stub.Submit(requests[2])
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert dict(err.value.trailing_metadata() or ())["retry-after-ms"] == "321"
            assert lock is not None
        # Released: the admitted calls complete, and the refused one goes through when resent.
        assert (await first).outcome == tally_pb2.OUTCOME_ACCEPTED
        assert (await second).outcome == tally_pb2.OUTCOME_ACCEPTED
        assert (await t.stub.Submit(requests[2])).outcome == tally_pb2.OUTCOME_ACCEPTED
    finally:
        await t.channel.close()
        await t.app.stop(1.0)


async def test_graceful_shutdown_says_not_serving_then_finishes_in_flight_calls(
    db_url: str, db: asyncpg.Connection
) -> None:
    t = await start_tally(db_url, db)
    try:
        st = await t.station()
        request = signed(st.key, consistent_form(st.tps, "ppwp", t.contests["ppwp"]))
        watcher = health_pb2_grpc.HealthStub(t.channel).Watch(
            health_pb2.HealthCheckRequest(service=service_names.TALLY.full_name)
        )
        assert (await watcher.read()).status == health_pb2.HealthCheckResponse.SERVING
        async with ChainLock(db_url) as lock:
            call = asyncio.ensure_future(t.stub.Submit(request))

            async def committing() -> bool:
                return await lock.waiters() > 0

            await poll_until(committing, "the call waiting on the chain lock", UNTIL_S)
            stopping = asyncio.ensure_future(t.app.server.stop(grace=10.0))
            assert (await watcher.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            watcher.cancel()  # an open watch is itself an in-flight call the grace period would wait for
            assert not call.done()
        response = await call  # the lock is gone: the in-flight call finishes normally
        assert response.outcome == tally_pb2.OUTCOME_ACCEPTED
        await stopping
        assert await t.count("submission") == 1
    finally:
        await t.channel.close()
        await t.app.stop(0.1)


async def test_logs_are_json_with_request_context(tally: Tally, caplog: pytest.LogCaptureFixture) -> None:
    from suara.runtime.logging import configure_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging("info", "json", service="tally-test")
    records: list[str] = []
    handler = logging.getLogger().handlers[0]

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(handler.format(record))

    capture = Capture()
    logging.getLogger().addHandler(capture)
    try:
        with pytest.raises(grpc.aio.AioRpcError):
            await tally.stub.Submit(tally_pb2.SubmitRequest(), metadata=(("x-request-id", "req-42"),))
    finally:
        root.handlers[:] = saved[0]  # later tests log where pytest expects, not to a closed capture
        root.setLevel(saved[1])
    lines = [json.loads(r) for r in records]
    errors = [line for line in lines if line.get("event") == "rpc_error"]
    assert errors, lines
    assert errors[0]["request_id"] == "req-42"
    assert errors[0]["method"] == "/suara.v1.TallyService/Submit"
    assert errors[0]["code"] == "INVALID_ARGUMENT"
    assert errors[0]["service"] == "tally-test"


async def test_concurrent_submissions_share_transactions(tally: Tally) -> None:
    """Group commit: calls that arrive while a commit is running go into the next one together."""
    stations = [await tally.station() for _ in range(50)]
    requests = [signed(s.key, consistent_form(s.tps, "ppwp", tally.contests["ppwp"])) for s in stations]
    committer = tally.app.service.committer
    batches_before = committer.batches
    async with ChainLock(tally.db_url):
        calls = [asyncio.ensure_future(tally.stub.Submit(r)) for r in requests]

        async def all_waiting_to_commit() -> bool:
            return committer.queued + committer.writing == len(requests)

        await poll_until(all_waiting_to_commit, "every call waiting to commit", UNTIL_S)
        first_batch = committer.writing
    responses = await asyncio.gather(*calls)
    assert all(r.outcome == tally_pb2.OUTCOME_ACCEPTED for r in responses)
    # The first transaction waited on the lock; everything that queued meanwhile shares the next one.
    assert 1 <= first_batch < len(requests)
    assert committer.batches - batches_before == 2
    positions = sorted(r.receipt.chain_position for r in responses)
    assert positions == list(range(1, 51))


async def test_a_slow_database_is_not_taken_for_a_gone_one(db_url: str, db: asyncpg.Connection) -> None:
    """A commit held past its deadline behind a lock is answered UNAVAILABLE (it may or may not be stored),
    but the database still answers a probe: tally keeps accepting and stays SERVING, unlike when the
    database is gone (tests/tally/test_database_outage.py)."""
    t = await start_tally(db_url, db, with_tally(BASE_SETTINGS, commit_wait_s=0.5))
    try:
        station = await t.station()
        request = signed(station.key, consistent_form(station.tps, "ppwp", t.contests["ppwp"]))
        gate = t.app.service.gate
        async with ChainLock(db_url):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await t.stub.Submit(request)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "may or may not be stored" in str(refused.value.details())

            async def decided() -> bool:  # the committer's own deadline fires just after the call's
                return not gate.available or (gate.checking is not None and gate.checking.done())

            await poll_until(decided, "the gate deciding", UNTIL_S)
            assert gate.available, "a slow commit closed the gate: every call would be refused"
            assert await _health(t.channel) == health_pb2.HealthCheckResponse.SERVING
        response = await t.stub.Submit(request)  # the resend the message asks for
        assert response.outcome == tally_pb2.OUTCOME_ACCEPTED  # the timed-out commit was rolled back, not half-done
        assert await t.count("submission") == 1
    finally:
        await t.channel.close()
        await t.app.stop(grace=1.0)
