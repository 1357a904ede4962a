"""TLS over a multi-address channel (suara.runtime.targets): every instance's certificate is checked
against the first address's host, as gRPC checks one address's; a certificate that does not name it is
refused on every instance."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cli.embedded import free_port
from suara.runtime.pki import KeyPair, issue_server
from suara.runtime.tls import ClientTls, open_channel
from tests.support.pki import suite_pki


async def _healthy_server(pair: KeyPair, port: int) -> grpc.aio.Server:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    server.add_secure_port(f"127.0.0.1:{port}", grpc.ssl_server_credentials([(pair.key_pem, pair.cert_pem)]))
    await server.start()
    return server


@pytest.mark.parametrize(
    ("named", "first", "answers"),
    [
        (["127.0.0.1"], "127.0.0.1", True),
        (["localhost"], "localhost", True),
        (["localhost"], "127.0.0.1", False),  # the certificate names another host than the first address's
        (["127.0.0.2"], "127.0.0.1", False),
    ],
)
async def test_each_instance_must_hold_a_certificate_naming_the_first_address(
    named: list[str], first: str, answers: bool
) -> None:
    pki = suite_pki()
    ports = [free_port(), free_port()]
    pair = issue_server(pki.pki.authority(), "spread", named)
    servers = [await _healthy_server(pair, port) for port in ports]
    address = f"{first}:{ports[0]},127.0.0.1:{ports[1]}"
    try:
        async with open_channel(address, ClientTls(pki.ca.read_bytes())) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            if answers:
                for _ in range(4):  # round_robin: both instances answer
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
                    assert reply.status == health_pb2.HealthCheckResponse.SERVING
            else:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        for server in servers:
            await server.stop(0)


async def test_in_plaintext_too_an_instance_not_serving_gets_no_calls() -> None:
    """SUARA_INSECURE's channels spread the same way: the instance whose health says NOT_SERVING is
    skipped (asked about a service only it would call NOT_SERVING, every answer says SERVING)."""
    servicers, servers, ports = [], [], [free_port(), free_port()]
    for port in ports:
        server = grpc.aio.server()
        servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        for name in ("", "probe"):
            await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        servicers.append(servicer)
        servers.append(server)
    try:
        for name in ("", "probe"):
            await servicers[0].set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        async with open_channel(",".join(f"127.0.0.1:{p}" for p in ports), None) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            answers = [
                (await stub.Check(health_pb2.HealthCheckRequest(service="probe"), timeout=10)).status for _ in range(10)
            ]
        assert answers == [health_pb2.HealthCheckResponse.SERVING] * 10
    finally:
        for server in servers:
            await server.stop(0)
