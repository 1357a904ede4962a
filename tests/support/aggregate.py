"""The in-process aggregate rig: a running aggregate on a free port against a test's database, a stub that
can both write and read, and updates sent through it checked against the oracle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import asyncpg
import grpc

from services.aggregate.access import aggregate_rules
from services.aggregate.server import AggregateApp
from suara.client import service_names
from suara.client.aggregate_stub import aggregate_stub
from suara.runtime.auth.client import ServiceAuthClientInterceptor
from suara.runtime.auth.store import issue_service_credential
from suara.runtime.settings import AggregateSettings, LogSettings, Settings
from suara.runtime.tls import open_channel
from suara.v1 import aggregate_pb2, aggregate_pb2_grpc
from tests.support.databases import as_service
from tests.support.oracles.aggregate import Oracle, Registry, totals_for
from tests.support.pki import suite_pki, with_tls


def aggregate_settings(port: int, internal_port: int = 0) -> Settings:
    """Over TLS with the suite's PKI (`insecure()` of it for plaintext)."""
    return with_tls(
        Settings(aggregate=AggregateSettings(port=port, internal_port=internal_port), log=LogSettings(format="console"))
    )


BASE_SETTINGS = aggregate_settings(0)


@dataclass
class Aggregate:
    app: AggregateApp
    callers: Callers
    stub: aggregate_pb2_grpc.AggregateServiceAsyncStub
    db: asyncpg.Connection
    db_url: str

    def channel_for(self, method: str) -> grpc.aio.Channel:
        """The channel whose certificate has the role `method` (a short name) needs, for calls by path."""
        return self.callers.by_role[
            aggregate_rules().get(service_names.method_path(service_names.AGGREGATE, method), "reader")
        ]

    async def close(self) -> None:
        await self.callers.close()
        await self.app.stop(grace=0.5)


class BothRoles:
    """A stub that sends each call through the channel whose certificate has the role its method needs,
    so one test stub can write and read. Real callers hold one role each (the relay writes, publish reads)."""

    def __init__(self, stubs: dict[str, aggregate_pb2_grpc.AggregateServiceAsyncStub]) -> None:
        self._stubs = stubs
        self._rules = aggregate_rules()

    def __getattr__(self, name: str) -> Any:
        role = self._rules.get(service_names.method_path(service_names.AGGREGATE, name), "reader")
        return getattr(self._stubs[role], name)


@dataclass
class Callers:
    """Channels to aggregate's internal listener, one per role, and the stub that uses them."""

    channels: list[grpc.aio.Channel]
    stub: aggregate_pb2_grpc.AggregateServiceAsyncStub
    by_role: dict[str, grpc.aio.Channel]

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


async def service_callers(db: asyncpg.Connection, app: AggregateApp) -> Callers:
    """A writer's and a reader's channel to `app`'s internal listener: certificates over TLS, or fresh
    token credentials registered in `db` when it serves plaintext."""
    address = f"127.0.0.1:{app.internal_port}"
    if app.settings.tls.insecure:
        writer = await issue_service_credential(db, "test-writer", "writer")
        reader = await issue_service_credential(db, "test-reader", "reader")
        channels = {
            "writer": open_channel(address, None, interceptors=[ServiceAuthClientInterceptor(writer)]),
            "reader": open_channel(address, None, interceptors=[ServiceAuthClientInterceptor(reader)]),
        }
        stubs = {role: aggregate_stub(channel) for role, channel in channels.items()}
        stubs["federation"] = stubs["writer"]  # tokens know no federation role: a writer federates
        channels["federation"] = channels["writer"]
    else:
        pki = suite_pki()
        roles = ("writer", "reader", "federation")
        channels = {role: pki.channel(address, pki.credential(f"test-{role}", role)) for role in roles}
        stubs = {role: aggregate_stub(channel) for role, channel in channels.items()}
    stub = cast("aggregate_pb2_grpc.AggregateServiceAsyncStub", BothRoles(stubs))
    return Callers(list(set(channels.values())), stub, channels)


async def start_aggregate(db_url: str, db: asyncpg.Connection, settings: Settings = BASE_SETTINGS) -> Aggregate:
    app = await AggregateApp.create(settings, as_service(db_url, "aggregate"))  # as aggregate's own role
    await app.start()
    callers = await service_callers(db, app)
    return Aggregate(app, callers, callers.stub, db, db_url)


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
