"""suara.runtime.metrics and the services' own counting: what a scrape says against what was done.

The oracle is the test's own count of calls made and the codes gRPC handed the client, and the
pool's own state; the server's numbers are read as Prometheus reads them, from /metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY, Gauge
from prometheus_client.parser import text_string_to_metric_families

from services.publish.metrics import Lag
from services.tally import metrics as tally_metrics
from services.tally.committer import Receipt, Result
from services.tally.intake import Prepared
from suara.runtime.database import Database, DatabaseUnavailable
from suara.runtime.errors import InvalidArgument, ResourceExhausted, Unauthenticated
from suara.runtime.grpc_server import Server, create_server
from suara.runtime.metrics import MetricsServer, watch_pool
from suara.v1 import tally_pb2
from tests.support.factories import consistent_form, signed
from tests.support.tally import Tally
from tests.support.waiting import poll_until, within

SERVICE = "suara.test.Probe"


def sample(name: str, **labels: str) -> float:
    """A sample's value in the process's registry (0 when it does not exist yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _handlers(calls: dict[str, Callable[[Any, Any], Any]]) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {name: grpc.unary_unary_rpc_method_handler(fn, lambda b: b, lambda b: b) for name, fn in calls.items()},
    )


async def _ok(request: bytes, context: Any) -> bytes:
    return request


async def _refused(request: bytes, context: Any) -> bytes:
    raise InvalidArgument("refused on purpose")  # the server kit turns it into a status


async def _broken(request: bytes, context: Any) -> bytes:
    raise RuntimeError("a bug")


@pytest.fixture
async def probe() -> AsyncIterator[tuple[Server, grpc.aio.Channel]]:
    server, port = create_server(
        lambda s: s.add_generic_rpc_handlers([_handlers({"Ok": _ok, "Refused": _refused, "Broken": _broken})]),
        ["grpc.health.v1.Health"],  # its methods are exported from the start
        metrics_service="probe",
    )
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield server, channel
    finally:
        await channel.close()
        await server.stop(0)


async def _call(channel: grpc.aio.Channel, method: str) -> grpc.StatusCode:
    call: Any = channel.unary_unary(f"/{SERVICE}/{method}")  # raw bytes both ways
    try:
        await call(b"x", timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_every_call_is_counted_by_method_and_the_code_the_client_got(
    probe: tuple[Server, grpc.aio.Channel],
) -> None:
    _, channel = probe
    handled = "suara_grpc_server_handled_total"
    # Exported before any call: the methods of the services named to the server.
    assert REGISTRY.get_sample_value(handled, {"service": "probe", "method": "Watch", "code": "OK"}) == 0
    before = {
        (m, c): sample(handled, service="probe", method=m, code=c)
        for m in ("Ok", "Refused", "Broken")
        for c in ("OK", "INVALID_ARGUMENT", "INTERNAL", "UNKNOWN")
    }
    seen_before = sample("suara_grpc_server_handling_seconds_count", service="probe", method="Ok")
    got: dict[tuple[str, str], int] = {}
    for method in ("Ok", "Ok", "Ok", "Refused", "Refused", "Broken"):
        code = (await _call(channel, method)).name
        got[(method, code)] = got.get((method, code), 0) + 1
    assert got == {("Ok", "OK"): 3, ("Refused", "INVALID_ARGUMENT"): 2, ("Broken", "INTERNAL"): 1}
    for (method, code), before_n in before.items():
        assert sample(handled, service="probe", method=method, code=code) - before_n == got.get((method, code), 0)
    assert sample("suara_grpc_server_handling_seconds_count", service="probe", method="Ok") - seen_before == 3


async def test_a_method_the_server_lacks_is_not_counted(probe: tuple[Server, grpc.aio.Channel]) -> None:
    _, channel = probe
    assert await _call(channel, "Invented") == grpc.StatusCode.UNIMPLEMENTED
    assert REGISTRY.get_sample_value("suara_grpc_server_handling_seconds_count", {
        "service": "probe", "method": "Invented"}) is None  # fmt: skip


async def test_streaming_calls_are_counted_too(probe: tuple[Server, grpc.aio.Channel]) -> None:
    """Health's Watch (a coroutine writing on its context) and reflection (an async generator)."""
    _, channel = probe
    handled = "suara_grpc_server_handled_total"
    watched = sample(handled, service="probe", method="Watch", code="CANCELLED")
    reflected = sample(handled, service="probe", method="ServerReflectionInfo", code="OK")

    call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
    first = await within(call.read(), "the first health update")
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    call.cancel()

    stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    replies = [r async for r in stream]
    assert replies and replies[0].list_services_response.service

    async def counted() -> bool:
        return (
            sample(handled, service="probe", method="Watch", code="CANCELLED") == watched + 1
            and sample(handled, service="probe", method="ServerReflectionInfo", code="OK") == reflected + 1
        )

    # The server sees the cancellation after the client does: its handler ends on its own schedule.
    await poll_until(counted, "the two streams counted with their codes", 10)


async def test_serving_follows_health(probe: tuple[Server, grpc.aio.Channel]) -> None:
    server, channel = probe
    health = health_pb2_grpc.HealthStub(channel)
    assert sample("suara_serving", service="probe") == 1
    await server.set_serving(False)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert sample("suara_serving", service="probe") == 0
    await server.set_serving(True)
    assert sample("suara_serving", service="probe") == 1


async def _scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_the_http_server_serves_the_registry_and_refreshes_on_scrape() -> None:
    gauge = Gauge("suara_test_refreshed", "set by a refresh")
    refreshed = 0

    async def refresh() -> None:
        nonlocal refreshed
        refreshed += 1
        gauge.set(refreshed)

    def broken() -> None:
        raise DatabaseUnavailable("gone")

    server = MetricsServer("127.0.0.1", 0)
    server.add_refresh(broken)  # a refresh that fails leaves the scrape answering
    server.add_refresh(refresh)
    await server.start()
    try:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}/metrics"
        first = await _scrape(server.url)
        assert first["suara_test_refreshed"][()] == 1
        assert "process_cpu_seconds_total" in first or "python_info" in first  # the default collectors
        assert not any(name.endswith("_created") for name in first)
        # Two scrapes within a second cost one refresh.
        second = await _scrape(server.url)
        assert second["suara_test_refreshed"][()] == 1 and refreshed == 1
    finally:
        await server.stop()
        REGISTRY.unregister(gauge)


async def test_pool_gauges_count_connections_in_use_and_acquires_waiting(db_url: str) -> None:
    db = await Database.open(db_url, size=1, application="suara-test-pool")
    try:
        watch_pool("pooltest", db)

        def value(name: str, **labels: str) -> float | None:
            return REGISTRY.get_sample_value(name, {"service": "pooltest", **labels})

        assert value("suara_db_pool_max_connections") == 1
        async with db.acquire() as conn:
            assert value("suara_db_pool_connections", state="in_use") == 1
            assert value("suara_db_pool_connections", state="idle") == 0
            waiter = asyncio.create_task(db.fetchval("SELECT 1"))
            await poll_until(_true_when(lambda: value("suara_db_pool_waiting") == 1), "one acquire waiting", 10)
            assert not waiter.done()
            await conn.fetchval("SELECT 1")
        assert await within(waiter, "the waiting query") == 1
        assert value("suara_db_pool_waiting") == 0
        assert value("suara_db_pool_connections", state="idle") == 1
    finally:
        await db.close()
    assert REGISTRY.get_sample_value("suara_db_pool_max_connections", {"service": "pooltest"}) is None


def _true_when(check: Callable[[], bool]) -> Callable[[], Any]:
    async def condition() -> bool:
        return check()

    return condition


def _prepared(contest: str) -> Prepared:
    return Prepared("3101011001001", contest, 1, b"", b"", b"", "d", [], {}, [])


def _result(outcome: str) -> Result:
    from datetime import UTC, datetime

    return Result(outcome, Receipt("id", b"", 1, b"", datetime.now(UTC)), (), 1)


def test_tally_counts_each_form_by_contest_and_outcome_and_each_refusal_by_reason() -> None:
    forms, refusals = "suara_tally_forms_total", "suara_tally_refusals_total"
    tally_metrics.ready(["ppwp", "pdpr"])
    keys = [("ppwp", o) for o in ("accepted", "duplicate", "conflict")] + [("pdpr", "quarantined"), ("", "rejected")]
    before = {k: sample(forms, contest=k[0], outcome=k[1]) for k in keys}
    reasons = ("malformed", "unauthenticated", "rate_limited", "unavailable")
    refused_before = {r: sample(refusals, reason=r) for r in reasons}
    malformed = InvalidArgument("bad")
    tally_metrics.count(
        [_prepared("ppwp"), _prepared("ppwp"), _prepared("ppwp"), _prepared("pdpr"), malformed,
         _prepared("ppwp"), _prepared("ppwp"), _prepared("ppwp")],
        [_result("ACCEPTED"), _result("DUPLICATE"), _result("CONFLICT"), _result("QUARANTINED"), malformed,
         Unauthenticated("who"), ResourceExhausted("slow down"), DatabaseUnavailable("gone")],
    )  # fmt: skip
    assert {k: sample(forms, contest=k[0], outcome=k[1]) - before[k] for k in keys} == {
        ("ppwp", "accepted"): 1,
        ("ppwp", "duplicate"): 1,
        ("ppwp", "conflict"): 1,
        ("pdpr", "quarantined"): 1,
        ("", "rejected"): 2,  # malformed, and not signed by a device key tally knows
    }
    assert {r: sample(refusals, reason=r) - refused_before[r] for r in reasons} == {
        "malformed": 1,
        "unauthenticated": 1,
        "rate_limited": 1,
        "unavailable": 1,
    }
    # Exported from the start, at 0 until counted.
    assert REGISTRY.get_sample_value(forms, {"contest": "pdpr", "outcome": "superseded"}) is not None
    assert REGISTRY.get_sample_value(refusals, {"reason": "overloaded"}) is not None


def test_publish_lag_is_the_age_of_the_first_head_seen_beyond_what_is_published() -> None:
    lag = Lag()
    assert lag.behind(0, now=100.0) == (0, 0.0)
    lag.saw(5, now=100.0)
    lag.saw(5, now=101.0)  # the same head again: first seen stays 100
    lag.saw(9, now=104.0)
    assert lag.behind(0, now=110.0) == (9, 10.0)
    assert lag.behind(5, now=110.0) == (4, 6.0)  # changes 6..9 first seen with head 9
    assert lag.behind(9, now=110.0) == (0, 0.0)
    lag.saw(12, now=120.0)
    assert lag.behind(9, now=121.0) == (3, 1.0)


async def test_tally_counts_what_its_api_answered_and_samples_the_outbox(tally: Tally) -> None:
    """Through the real API: each answer's outcome counted once under its contest, and the outbox gauges
    (no relay here, so every row waits) as the database holds them."""
    forms = "suara_tally_forms_total"
    keys = [("ppwp", "accepted"), ("ppwp", "duplicate"), ("ppwp", "quarantined"), ("", "rejected")]
    before = {k: sample(forms, contest=k[0], outcome=k[1]) for k in keys}
    first, second = await tally.station(), await tally.station()
    request = signed(first.key, consistent_form(first.tps, "ppwp", tally.contests["ppwp"]))
    answers = [await tally.stub.Submit(request), await tally.stub.Submit(request)]
    inconsistent = consistent_form(second.tps, "ppwp", tally.contests["ppwp"])
    inconsistent.votes[tally.contests["ppwp"][0]] += 1
    answers.append(await tally.stub.Submit(signed(second.key, inconsistent)))
    malformed = signed(second.key, consistent_form(second.tps, "ppwp", tally.contests["ppwp"]))
    malformed.form.signature = b"\x00" * 64
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await tally.stub.Submit(malformed)
    got: dict[tuple[str, str], int] = {}
    for answer in answers:
        key = ("ppwp", tally_pb2.Outcome.Name(answer.outcome).removeprefix("OUTCOME_").lower())
        got[key] = got.get(key, 0) + 1
    assert refused.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED)
    got[("", "rejected")] = 1
    assert got and {k: sample(forms, contest=k[0], outcome=k[1]) - before[k] for k in keys} == {
        k: got.get(k, 0) for k in keys
    }

    await tally.app.sample_metrics()
    pending = await tally.db.fetchrow(
        "SELECT count(*) AS n, extract(epoch FROM now() - min(created_at))::float8 AS age "
        "FROM tally.outbox WHERE delivered_at IS NULL"
    )
    assert pending["n"] == 2  # the accepted and the quarantined form; the duplicate added none
    assert sample("suara_relay_outbox_rows") == 2
    assert 0 < sample("suara_relay_outbox_oldest_age_seconds") <= pending["age"]
    assert sample("suara_relay_dead_letters") == 0
    assert sample("suara_relay_is_leader") == 0  # no relay configured
    assert sample("suara_tally_in_flight_forms") == 0
    assert sample("suara_tally_database_gate_open") == 1
