"""TLS on every listener: what a network attacker, a stranger's certificate, a reader, a revoked or a
replayed caller get, and certificates renewed under a running server.

The oracle is the database: after every refusal, nothing of the call is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from cryptography import x509

from services.tally.access import create_admin_credential
from suara.client.aggregate_stub import aggregate_stub
from suara.client.stubs import tally_stub
from suara.election.signing import DeviceKey
from suara.runtime.tls import ClientTls, open_channel
from suara.v1 import aggregate_pb2, tally_pb2
from tests.support.aggregate import BASE_SETTINGS as AGGREGATE_SETTINGS
from tests.support.aggregate import Aggregate, start_aggregate, update
from tests.support.factories import TEST_ELECTION
from tests.support.oracles.aggregate import Registry
from tests.support.pki import SuitePki, suite_pki
from tests.support.processes import run_suara, suara_env
from tests.support.tally import BASE_SETTINGS as TALLY_SETTINGS
from tests.support.tally import Tally, start_tally
from tests.support.waiting import poll_until, within
from tests.tls.h2 import call_over_tls

HEALTH_CHECK = "/grpc.health.v1.Health/Check"


@pytest.fixture
async def aggregate(db_url: str, db: asyncpg.Connection) -> AsyncIterator[Aggregate]:
    a = await start_aggregate(db_url, db)
    yield a
    await a.close()


@pytest.fixture
def own_pki(tmp_path: Path) -> SuitePki:
    """A PKI of the test's own, to revoke and renew in without touching the suite's."""
    return SuitePki.create(tmp_path / "pki")


async def _an_update(db: asyncpg.Connection) -> aggregate_pb2.ApplyUpdatesRequest:
    registry = await Registry.read(db)
    return aggregate_pb2.ApplyUpdatesRequest(updates=[update(registry, sorted(registry.tps)[0])])


async def _applied(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM aggregate.tps_result"))


async def _refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    return err.value


async def test_plaintext_is_refused_on_every_listener(aggregate: Aggregate, tally: Tally) -> None:
    request = await _an_update(aggregate.db)
    for port in (aggregate.app.port, aggregate.app.internal_port):
        async with open_channel(f"127.0.0.1:{port}", None) as plain:
            error = await _refused(aggregate_stub(plain).ApplyUpdates(request, timeout=5))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    for port in (tally.app.port, tally.app.internal_port):
        async with open_channel(f"127.0.0.1:{port}", None) as plain:
            error = await _refused(tally_stub(plain).GetChainHead(tally_pb2.GetChainHeadRequest(), timeout=5))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert await _applied(aggregate.db) == 0


async def test_a_certificate_from_another_ca_is_refused(aggregate: Aggregate, own_pki: SuitePki) -> None:
    request = await _an_update(aggregate.db)
    stranger = own_pki.credential("relay", "writer")  # a writer, but of another CA
    async with own_pki.channel(f"127.0.0.1:{aggregate.app.internal_port}", stranger) as channel:
        error = await _refused(aggregate_stub(channel).ApplyUpdates(request, timeout=5))
    assert error.code() == grpc.StatusCode.UNAVAILABLE  # the handshake fails: the call never reaches aggregate
    # The suite's own writer certificate, trusting only the other CA: the client refuses the server.
    writer = suite_pki().credential("test-writer", "writer")
    trusting_another = ClientTls(own_pki.ca.read_bytes(), writer.key_pair)
    async with open_channel(f"127.0.0.1:{aggregate.app.internal_port}", trusting_another) as channel:
        error = await _refused(aggregate_stub(channel).ApplyUpdates(request, timeout=5))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert await _applied(aggregate.db) == 0


async def test_a_readers_certificate_cannot_apply(aggregate: Aggregate) -> None:
    request = await _an_update(aggregate.db)
    pki = suite_pki()
    reader = pki.credential("test-reader", "reader")
    async with pki.channel(f"127.0.0.1:{aggregate.app.internal_port}", reader) as channel:
        error = await _refused(aggregate_stub(channel).ApplyUpdates(request))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "is a reader" in (error.details() or "") and "writer" in (error.details() or "")
        # The same certificate reads: it is the role, not the connection, that is refused.
        await aggregate_stub(channel).GetArea(aggregate_pb2.GetAreaRequest(area="", contest="ppwp"))
    assert await _applied(aggregate.db) == 0


@pytest.mark.parametrize("election", ["gladi-2024-01", ""])
async def test_a_certificate_of_another_election_or_none_is_refused(aggregate: Aggregate, election: str) -> None:
    """A rehearsal's writer certificate, from the very same CA, is worth nothing on the night."""
    request = await _an_update(aggregate.db)
    pki = suite_pki()
    rehearsal = pki.credential(f"writer-of-{election or 'none'}", "writer", election=election)
    async with pki.channel(f"127.0.0.1:{aggregate.app.internal_port}", rehearsal) as channel:
        error = await _refused(aggregate_stub(channel).ApplyUpdates(request))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    details = error.details() or ""
    assert (repr(election) if election else "no election") in details and repr(TEST_ELECTION) in details
    assert f"--election {TEST_ELECTION}" in details  # what to ask for
    assert await _applied(aggregate.db) == 0
    writer = pki.credential("test-writer", "writer")  # the same role of this election applies
    async with pki.channel(f"127.0.0.1:{aggregate.app.internal_port}", writer) as channel:
        await aggregate_stub(channel).ApplyUpdates(request)
    assert await _applied(aggregate.db) == 1


async def test_a_role_gated_method_on_the_public_listener_names_the_internal_address(tally: Tally) -> None:
    key = DeviceKey.generate(tally.tps_codes[0])
    enroll = tally_pb2.EnrollDeviceRequest(tps=key.tps, public_key=key.public_key)
    error = await _refused(tally.stub.EnrollDevice(enroll))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert f"127.0.0.1:{tally.app.internal_port}" in (error.details() or "")
    assert await tally.count("device") == 0
    await tally.admin.EnrollDevice(enroll)  # the admin's certificate, on the internal listener
    assert await tally.count("device") == 1


async def test_a_revoked_certificate_is_refused_within_a_second(
    db_url: str, db: asyncpg.Connection, own_pki: SuitePki
) -> None:
    a = await start_aggregate(db_url, db, own_pki.settings(AGGREGATE_SETTINGS))
    try:
        request = await _an_update(db)
        writer = own_pki.credential("relay", "writer")
        async with own_pki.channel(f"127.0.0.1:{a.app.internal_port}", writer) as channel:
            stub = aggregate_stub(channel)
            await stub.ApplyUpdates(aggregate_pb2.ApplyUpdatesRequest())  # connected, and let in
            own_pki.pki.revoke("client-relay")  # the name SuitePki.bundle issues it under

            async def refused() -> bool:
                try:
                    await stub.ApplyUpdates(aggregate_pb2.ApplyUpdatesRequest())
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.PERMISSION_DENIED, exc
                    assert "revoked" in (exc.details() or "")
                    return True
                return False

            # On the connection already open: the handshake is long past, the certificate is checked per call.
            await poll_until(refused, "the revoked certificate refused", within_s=1.0, interval_s=0.05)
            error = await _refused(stub.ApplyUpdates(request))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert await _applied(db) == 0
    finally:
        await a.close()


def _served_serial(port: int, ca: bytes) -> int:
    """The serial of the certificate the server presents to a new handshake (blocking)."""
    context = ssl.create_default_context(cadata=ca.decode())
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as s,
    ):
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


async def test_replaced_certificate_files_serve_new_handshakes_without_a_restart(
    db_url: str, db: asyncpg.Connection, own_pki: SuitePki
) -> None:
    t = await start_tally(db_url, db, own_pki.settings(TALLY_SETTINGS))
    try:
        ca = own_pki.ca.read_bytes()
        first = await asyncio.to_thread(_served_serial, t.app.port, ca)
        assert first == x509.load_pem_x509_certificate(own_pki.pki.cert("tally").read_bytes()).serial_number
        renewed = own_pki.pki.issue_server("tally", ("127.0.0.1", "localhost")).certificate.serial_number
        assert renewed != first

        async def serving_renewed() -> bool:
            return await asyncio.to_thread(_served_serial, t.app.port, ca) == renewed

        await poll_until(serving_renewed, "the renewed certificate served", within_s=5.0, interval_s=0.05)
        # gRPC clients connect with it too, on both listeners.
        async with own_pki.channel(f"127.0.0.1:{t.app.port}") as channel:
            await tally_stub(channel).GetChainHead(tally_pb2.GetChainHeadRequest())
    finally:
        await t.close()


async def test_a_connection_below_tls_1_3_gets_no_answer(tally: Tally) -> None:
    """gRPC's TLS accepts 1.2 and cannot be told otherwise; the server kit refuses every call made on it."""
    ca = suite_pki().ca.read_bytes()
    port = tally.app.port
    version, answer = await asyncio.to_thread(
        call_over_tls, "127.0.0.1", port, ca, HEALTH_CHECK, b"", maximum=ssl.TLSVersion.TLSv1_2
    )
    assert version == "TLSv1.2"
    assert answer.ended and answer.data == [], "a TLS 1.2 call got a response message"
    # The same hand-made call over TLS 1.3 is answered: what the test above sees is the version check.
    version, answer = await asyncio.to_thread(
        call_over_tls, "127.0.0.1", port, ca, HEALTH_CHECK, b"", maximum=ssl.TLSVersion.TLSv1_3
    )
    assert version == "TLSv1.3"
    assert answer.ended and answer.data, "a TLS 1.3 call was not answered"


class Recorder:
    """A TCP proxy on loopback that records every byte a client sends through it to `target`."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.sent = bytearray()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Recorder:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, record: bool) -> None:
            with contextlib.suppress(OSError):
                while chunk := await src.read(65536):
                    if record:
                        self.sent.extend(chunk)
                    dst.write(chunk)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))


async def _replay(port: int, data: bytes) -> None:
    """The recorded bytes, sent again on a new connection; returns when the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    with contextlib.suppress(OSError):
        while await reader.read(65536):
            pass
    writer.close()


async def test_a_captured_admin_request_cannot_be_replayed_over_tls(tally: Tally) -> None:
    """Over TLS the recorded bytes are useless on a new connection: the handshake cannot be completed
    without the client's key, and nothing of the call is applied."""
    await _capture_and_replay(tally, "tls")


async def test_in_plaintext_the_same_capture_replays(insecure_tally: Tally) -> None:
    """The contrast (SUARA_INSECURE, debugging only): the same recording, replayed, enrolls the device
    again; which shows the recording above held the request, and why plaintext is for debugging only."""
    await _capture_and_replay(insecure_tally, "plaintext")


async def _capture_and_replay(t: Tally, mode: str) -> None:
    key = DeviceKey.generate(t.tps_codes[0])
    enroll = tally_pb2.EnrollDeviceRequest(tps=key.tps, public_key=key.public_key, label="captured")
    async with Recorder(t.app.internal_port) as proxy:
        if mode == "tls":
            pki = suite_pki()
            channel = pki.channel(f"127.0.0.1:{proxy.port}", pki.credential("test-admin", "admin"))
            metadata: tuple[tuple[str, str], ...] = ()
        else:
            channel = open_channel(f"127.0.0.1:{proxy.port}", None)
            metadata = (await create_admin_credential(t.db, "captured")).metadata()
        async with channel:
            await tally_stub(channel).EnrollDevice(enroll, metadata=metadata)
    assert await t.count("device") == 1
    await t.db.execute("DELETE FROM tally.device WHERE device_id = $1", key.device_id)
    assert proxy.sent

    if mode == "tls":
        await within(_replay(t.app.internal_port, bytes(proxy.sent)), "the server closing the replayed connection", 10)
        assert await t.count("device") == 0
    else:
        replay = asyncio.create_task(_replay(t.app.internal_port, bytes(proxy.sent)))
        try:

            async def enrolled_again() -> bool:
                return await t.count("device") == 1

            await poll_until(enrolled_again, "the plaintext replay applied", within_s=10)
        finally:
            replay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replay


async def test_a_server_without_certificates_exits_2_naming_them(db_url: str, tmp_path: Path) -> None:
    env = suara_env(DATABASE_URL=db_url, SUARA_TALLY_PORT="0", SUARA_TALLY_TLS_CERT="", SUARA_TALLY_TLS_KEY="")
    result = await run_suara("tally", "serve", env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "SUARA_TALLY_TLS_CERT" in result.stderr and "SUARA_TALLY_TLS_KEY" in result.stderr
    assert "SUARA_INSECURE" in result.stderr
