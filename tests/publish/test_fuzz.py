"""Hostile bytes into publish's GetStatus: random, and a valid request mutated. Every reply is a precise
status (never INTERNAL or UNKNOWN), nothing is written (publish's tables, the site), and publish keeps
serving."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.publish.server import PublishApp
from suara.client import service_names
from suara.runtime.wire import SMALL_REQUEST_BYTES
from suara.v1 import publish_pb2
from tests.publish.test_app import _settings
from tests.support.fuzz import call_raw, mutated
from tests.support.pki import suite_pki
from tests.support.publish import Pipeline

SERVICE = service_names.PUBLISH
METHODS = [m.name for m in SERVICE.methods]
SEEDS = {"GetStatus": publish_pb2.GetStatusRequest().SerializeToString()}


def test_every_method_has_a_seed() -> None:
    assert set(SEEDS) == set(METHODS), "a new RPC needs a seed here"


@pytest.fixture
async def status_server(pipeline: Pipeline, tmp_path: Path) -> AsyncIterator[tuple[PublishApp, grpc.aio.Channel]]:
    """Publish's status server alone: no publishing loop, so whatever is written was written by a call."""
    app = await PublishApp.create(await _settings(pipeline, tmp_path / "site", tmp_path), pipeline.db_url)
    await app.server.start()
    try:
        async with suite_pki().channel(f"127.0.0.1:{app.port}") as channel:
            yield app, channel
    finally:
        await app.stop(0.5)


async def _written(app: PublishApp) -> tuple[object, ...]:
    tables = await app.db.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'publish' ORDER BY 1"
    )
    counts = [await app.db.fetchval(f'SELECT count(*) FROM publish."{r["table_name"]}"') for r in tables]
    site = app.settings.site.dir
    return (*counts, sorted(str(f) for f in site.rglob("*")) if site.exists() else None)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(METHODS), choice=st.integers(0, 2), random_bytes=st.binary(max_size=512), data=st.data())
async def test_hostile_bytes_get_a_precise_status_and_write_nothing(
    status_server: tuple[PublishApp, grpc.aio.Channel],
    method: str,
    choice: int,
    random_bytes: bytes,
    data: st.DataObject,
) -> None:
    app, channel = status_server
    body = random_bytes if choice == 0 else data.draw(mutated(SEEDS[method]))
    before = await _written(app)
    await call_raw(channel, service_names.method_path(SERVICE, method), body)
    assert await _written(app) == before
    assert await call_raw(channel, service_names.method_path(SERVICE, "GetStatus"), b"") == grpc.StatusCode.OK


async def test_a_request_above_the_small_limit_is_refused_naming_it(
    status_server: tuple[PublishApp, grpc.aio.Channel],
) -> None:
    _, channel = status_server
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        service_names.method_path(SERVICE, "GetStatus")
    )
    try:
        await call(b"\x0a" + b"\x80\x80\x04" + bytes(SMALL_REQUEST_BYTES), timeout=10)  # an unknown field, 64 KiB
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"{SMALL_REQUEST_BYTES}" in (error.details() or "")
    else:
        raise AssertionError("a 64 KiB GetStatus request was taken")
