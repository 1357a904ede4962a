"""Service credentials in front of a gRPC server: who gets in, as what, and what everyone else is told.

The server here is a tiny generic one (raw bytes, no aggregate code) behind the
real interceptor and the real server kit (health, reflection); the credential
table lives in a schema of the test's own, made with the DDL aggregate ships.
"""

from __future__ import annotations

import argparse
import json
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.aggregate.access import aggregate_rules, aggregate_self_authenticated
from suara.runtime.auth.client import ServiceAuthClientInterceptor
from suara.runtime.auth.credential import Role, ServiceCredential
from suara.runtime.auth.interceptor import AuthInterceptor
from suara.runtime.auth.service_tokens import ServiceTokens
from suara.runtime.auth.store import (
    PgCredentialStore,
    credential_table_ddl,
    issue_service_credential,
    revoke_service_credential,
)
from suara.runtime.database import Database
from suara.runtime.grpc_server import Server, create_server
from suara.runtime.settings import DatabaseSettings, Settings

TABLE = "svcauth_test.service_credential"
WRITE, READ, OTHER = "/test.Echo/Write", "/test.Echo/Read", "/test.Echo/Other"
RULES: dict[str, Role] = {WRITE: "writer", READ: "reader"}  # OTHER exists but nobody may call it


async def _echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return request


def _raw(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    """A call of `method` with raw bytes both ways (no serializers)."""
    return cast("grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]", channel.unary_unary(method))


@dataclass
class Protected:
    server: Server
    target: str
    channel: grpc.aio.Channel
    db: asyncpg.Connection

    async def call(self, method: str, metadata: tuple[tuple[str, str], ...] | None = None) -> bytes:
        return await _raw(self.channel, method)(b"ping", metadata=metadata, timeout=5)

    async def code(self, method: str, metadata: tuple[tuple[str, str], ...] | None = None) -> grpc.StatusCode:
        try:
            await self.call(method, metadata)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    async def issue(self, role: Role) -> ServiceCredential:
        return await issue_service_credential(self.db, f"test-{role}", role, TABLE)


@pytest.fixture
async def protected(db: asyncpg.Connection, db_url: str) -> AsyncIterator[Protected]:
    await db.execute("CREATE SCHEMA svcauth_test")
    await db.execute(credential_table_ddl(TABLE))
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        name: grpc.unary_unary_rpc_method_handler(_echo) for name in ("Write", "Read", "Other")
    }
    server, port = create_server(
        lambda s: s.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),)),
        ["test.Echo"],
        interceptors=[AuthInterceptor(ServiceTokens(PgCredentialStore(Database(pool), TABLE)), RULES)],
    )
    await server.start()
    target = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(target)
    yield Protected(server, target, channel, db)
    await channel.close()
    await server.stop(0)
    await pool.close()


async def test_no_credential_is_unauthenticated(protected: Protected) -> None:
    assert await protected.code(WRITE) == grpc.StatusCode.UNAUTHENTICATED
    assert await protected.code(READ) == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    "header",
    [
        "Bearer abc",
        "Suara-Service",
        "Suara-Service garbage",
        "Suara-Service svc_0123456789ab:notanumber:00",
        "Suara-Service svc_0123456789ab:1700000000",
        "Suara-Service svc_0123456789ab:{now}:zz",
        "Suara-Service svc_0123456789ab:{now}:" + "00" * 64,
        "Suara-Service x:y:z:w",
    ],
)
async def test_garbled_credentials_are_unauthenticated(protected: Protected, header: str) -> None:
    metadata = (("authorization", header.format(now=int(time.time()))),)
    assert await protected.code(WRITE, metadata) == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("skew_s", [-3600, -61, 61, 3600])
async def test_a_token_outside_sixty_seconds_is_unauthenticated(protected: Protected, skew_s: int) -> None:
    writer = await protected.issue("writer")
    stale = writer.metadata(WRITE, int(time.time()) + skew_s)
    assert await protected.code(WRITE, stale) == grpc.StatusCode.UNAUTHENTICATED


async def test_a_token_within_the_window_is_accepted(protected: Protected) -> None:
    writer = await protected.issue("writer")
    assert await protected.code(WRITE, writer.metadata(WRITE, int(time.time()) - 50)) == grpc.StatusCode.OK


async def test_a_signature_for_another_method_is_unauthenticated(protected: Protected) -> None:
    reader = await protected.issue("reader")
    token = reader.token(READ)  # signed for Read, sent on Write and on a second Read-shaped name
    assert await protected.code(WRITE, (("authorization", token),)) == grpc.StatusCode.UNAUTHENTICATED
    assert await protected.code(READ, (("authorization", token),)) == grpc.StatusCode.OK


async def test_a_signature_by_another_key_is_unauthenticated(protected: Protected) -> None:
    writer = await protected.issue("writer")
    impostor = ServiceCredential(
        writer.id, writer.name, "writer", ServiceCredential.generate("x", "writer").private_key
    )
    assert await protected.code(WRITE, impostor.metadata(WRITE)) == grpc.StatusCode.UNAUTHENTICATED


async def test_unknown_and_revoked_credentials_are_unauthenticated(protected: Protected) -> None:
    never_registered = ServiceCredential.generate("ghost", "writer")
    assert await protected.code(WRITE, never_registered.metadata(WRITE)) == grpc.StatusCode.UNAUTHENTICATED
    revoked = await protected.issue("writer")
    assert await revoke_service_credential(protected.db, revoked.id, TABLE)
    assert not await revoke_service_credential(protected.db, revoked.id, TABLE)  # already revoked
    assert await protected.code(WRITE, revoked.metadata(WRITE)) == grpc.StatusCode.UNAUTHENTICATED


async def test_a_new_credential_works_at_once_though_a_miss_came_first(protected: Protected) -> None:
    credential = ServiceCredential.generate("late", "writer")
    assert await protected.code(WRITE, credential.metadata(WRITE)) == grpc.StatusCode.UNAUTHENTICATED
    from suara.runtime.auth.store import register_service_credential

    await register_service_credential(protected.db, credential, TABLE)
    assert await protected.code(WRITE, credential.metadata(WRITE)) == grpc.StatusCode.OK


async def test_roles_are_disjoint_and_unlisted_methods_are_closed(protected: Protected) -> None:
    writer, reader = await protected.issue("writer"), await protected.issue("reader")
    assert await protected.code(WRITE, reader.metadata(WRITE)) == grpc.StatusCode.PERMISSION_DENIED
    assert await protected.code(READ, writer.metadata(READ)) == grpc.StatusCode.PERMISSION_DENIED
    assert await protected.code(OTHER, writer.metadata(OTHER)) == grpc.StatusCode.PERMISSION_DENIED
    assert await protected.code(OTHER, reader.metadata(OTHER)) == grpc.StatusCode.PERMISSION_DENIED


async def test_valid_credentials_get_through(protected: Protected) -> None:
    writer, reader = await protected.issue("writer"), await protected.issue("reader")
    assert await protected.call(WRITE, writer.metadata(WRITE)) == b"ping"
    assert await protected.call(READ, reader.metadata(READ)) == b"ping"
    for _ in range(3):  # served from the cache after the first lookup
        assert await protected.call(WRITE, writer.metadata(WRITE)) == b"ping"


async def test_the_client_interceptor_signs_every_call(protected: Protected) -> None:
    writer = await protected.issue("writer")
    channel = grpc.aio.insecure_channel(protected.target, interceptors=[ServiceAuthClientInterceptor(writer)])
    try:
        assert await _raw(channel, WRITE)(b"ping", timeout=5) == b"ping"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _raw(channel, READ)(b"ping", timeout=5)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await channel.close()


async def test_health_needs_no_credential(protected: Protected) -> None:
    health = health_pb2_grpc.HealthStub(protected.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service="test.Echo"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_aggregate_rules_name_every_rpc() -> None:
    from suara.v1 import aggregate_pb2

    methods = {m.name for m in aggregate_pb2.DESCRIPTOR.services_by_name["AggregateService"].methods}
    rules = aggregate_rules()
    official = {name.rsplit("/", 1)[1] for name in aggregate_self_authenticated()}
    assert official == {"SubmitRecap"}  # an official's signed recap, not a service credential
    assert {name.rsplit("/", 1)[1] for name in rules} | official == methods
    assert not {name.rsplit("/", 1)[1] for name in rules} & official
    assert rules["/suara.v1.AggregateService/GetReconciliation"] == "reader"
    assert rules["/suara.v1.AggregateService/ApplyUpdates"] == "writer"
    assert rules["/suara.v1.AggregateService/ApplyAreaUpdates"] == "federation"  # by certificate
    assert aggregate_rules(federation="writer")["/suara.v1.AggregateService/ApplyAreaUpdates"] == "writer"
    assert rules["/suara.v1.AggregateService/GetArea"] == "reader"
    assert rules["/suara.v1.AggregateService/Changes"] == "reader"


def test_the_credential_file_round_trips_and_is_owner_only(tmp_path: Path) -> None:
    credential = ServiceCredential.generate("publish", "reader")
    path = tmp_path / "keys" / "publish.key.json"
    credential.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = ServiceCredential.load(path)
    assert (loaded.id, loaded.name, loaded.role, loaded.public_key) == (
        credential.id,
        credential.name,
        credential.role,
        credential.public_key,
    )
    assert json.loads(path.read_text())["kind"] == "suara-service-credential"


async def test_suara_service_issue_registers_and_writes_the_file(
    protected: Protected, db_url: str, tmp_path: Path
) -> None:
    from cli.service import run_issue

    settings = Settings(database=DatabaseSettings(url=db_url), data_dir=tmp_path)
    args = argparse.Namespace(name="tally-relay", role="writer", out=None, table=TABLE, force=False)
    assert await run_issue(args, settings) == 0
    path = tmp_path / "tally-relay.key.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    credential = ServiceCredential.load(path)
    row = await protected.db.fetchrow(f"SELECT name, role, public_key FROM {TABLE} WHERE id = $1", credential.id)
    assert row is not None and (row["name"], row["role"], bytes(row["public_key"])) == (
        "tally-relay",
        "writer",
        credential.public_key,
    )
    assert await protected.call(WRITE, credential.metadata(WRITE)) == b"ping"
    assert await run_issue(args, settings) == 2  # the file exists: not overwritten without --force
