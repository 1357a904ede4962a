"""The in-process aggregate rig: a running aggregate on a free port against a test's database, a stub that
can both write and read, and updates sent through it checked against the oracle."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc

from services.aggregate.access import aggregate_rules
from services.aggregate.server import AggregateApp
from suara.client.aggregate_stub import aggregate_stub
from suara.runtime.auth.client import ServiceAuthClientInterceptor
from suara.runtime.auth.credential import ServiceCredential
from suara.runtime.auth.store import issue_service_credential
from suara.runtime.settings import AggregateSettings, LogSettings, Settings
from suara.v1 import aggregate_pb2, aggregate_pb2_grpc
from tests.support.databases import as_service
from tests.support.oracles.aggregate import Oracle, Registry, totals_for


def aggregate_settings(port: int) -> Settings:
    return Settings(aggregate=AggregateSettings(port=port), log=LogSettings(format="console"))


BASE_SETTINGS = aggregate_settings(0)


@dataclass
class Aggregate:
    app: AggregateApp
    channel: grpc.aio.Channel
    stub: aggregate_pb2_grpc.AggregateServiceAsyncStub
    db: asyncpg.Connection
    db_url: str

    async def close(self) -> None:
        await self.channel.close()
        await self.app.stop(grace=0.5)


class BothRoles(grpc.aio.UnaryUnaryClientInterceptor):
    """Signs each call with the credential its method needs, so one test stub can write and read.

    Real callers hold one role each (the relay writes, publish reads)."""

    def __init__(self, writer: ServiceCredential, reader: ServiceCredential) -> None:
        self.by_role = {"writer": ServiceAuthClientInterceptor(writer), "reader": ServiceAuthClientInterceptor(reader)}
        self.rules = aggregate_rules()

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = client_call_details.method
        name = method.decode() if isinstance(method, bytes) else str(method)
        role = self.rules.get(name, "reader")
        return await self.by_role[role].intercept_unary_unary(continuation, client_call_details, request)


async def service_channel(db: asyncpg.Connection, port: int) -> grpc.aio.Channel:
    """A channel to the aggregate on `port` carrying fresh writer and reader credentials registered in `db`."""
    writer = await issue_service_credential(db, "test-writer", "writer")
    reader = await issue_service_credential(db, "test-reader", "reader")
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=[BothRoles(writer, reader)])


async def start_aggregate(db_url: str, db: asyncpg.Connection) -> Aggregate:
    app = await AggregateApp.create(BASE_SETTINGS, as_service(db_url, "aggregate"))  # as aggregate's own role
    await app.start()
    channel = await service_channel(db, app.port)
    return Aggregate(app, channel, aggregate_stub(channel), db, db_url)


def update(
    registry: Registry,
    tps: str,
    contest: str = "ppwp",
    version: int = 1,
    *,
    quarantined: bool = False,
    variant: int = 0,
) -> aggregate_pb2.TpsUpdate:
    return aggregate_pb2.TpsUpdate(
        tps=tps,
        contest=contest,
        version=version,
        totals=totals_for(tps, contest, version, registry.choices[contest], variant),
        quarantined=quarantined,
        failed_checks=["sah_plus_tidak_sah_ne_suara_total"] if quarantined else [],
    )


async def apply(a: Aggregate, oracle: Oracle, updates: list[aggregate_pb2.TpsUpdate]) -> list[str]:
    response = await a.stub.ApplyUpdates(aggregate_pb2.ApplyUpdatesRequest(updates=updates))
    got = [aggregate_pb2.UpdateOutcome.Name(o).removeprefix("UPDATE_OUTCOME_") for o in response.outcomes]
    want = [oracle.send(u) for u in updates]
    assert got == want
    return got
