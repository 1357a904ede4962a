"""Client certificates renewed under a running service: the relay's and publish's channels follow their
credential files.

The oracle is aggregate's database (what was applied), the published site, and the CA's revocation
list: once the old certificate is revoked, only a process that switched to the new one can still work.
"""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import grpc
import pytest

from services.tally.relay import undelivered
from suara.client.aggregate_stub import aggregate_stub
from suara.runtime import tls as tls_module
from suara.runtime.auth.certificate import CertCredential, load_credential
from suara.runtime.auth.client import caller_channel
from suara.runtime.secrets_file import write_secret
from suara.runtime.tls import ClientTls, FollowingChannel
from suara.v1 import aggregate_pb2
from tests.support.aggregate import start_aggregate
from tests.support.factories import TEST_ELECTION, consistent_form, signed
from tests.support.pki import suite_pki
from tests.support.processes import running
from tests.support.publish import Pipeline
from tests.support.tally import BASE_SETTINGS as TALLY_SETTINGS
from tests.support.tally import Tally, relaying, start_tally
from tests.support.waiting import STARTUP_S, poll_until


async def _submit(tally: Tally) -> None:
    station = await tally.station()
    form = consistent_form(station.tps, "ppwp", tally.contests["ppwp"])
    await tally.stub.Submit(signed(station.key, form))


async def _applied(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM aggregate.tps_result"))


async def test_a_running_relay_uses_its_renewed_certificate_after_the_old_is_revoked(
    db_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    pki = suite_pki()
    bundle = tmp_path / "relay.pem"
    write_secret(bundle, pki.pki.issue_client("renewal-old", "writer", election=TEST_ELECTION).bundle().decode())
    old = CertCredential.load(bundle)
    aggregate = await start_aggregate(db_url, db)
    internal = f"127.0.0.1:{aggregate.app.internal_port}"
    tally = await start_tally(db_url, db, relaying(TALLY_SETTINGS, bundle, internal))
    try:
        relay = tally.app.relay
        assert relay is not None
        await _submit(tally)

        async def delivered() -> bool:
            return await undelivered(db) == 0

        await poll_until(delivered, "the first form delivered with the old certificate")
        assert await _applied(db) == 1

        # Renewed in place (same role, a new key), then the old one revoked: the process keeps running.
        write_secret(bundle, pki.pki.issue_client("renewal-new", "writer", election=TEST_ELECTION).bundle().decode())
        pki.pki.revoke("renewal-old")
        async with pki.channel(internal, old) as channel:  # the revocation is in force

            async def old_refused() -> bool:
                try:
                    await aggregate_stub(channel).ApplyUpdates(aggregate_pb2.ApplyUpdatesRequest())
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.PERMISSION_DENIED, exc
                    return True
                return False

            await poll_until(old_refused, "the old certificate refused")

        await _submit(tally)
        await poll_until(delivered, "the form sent after the renewal delivered")
        assert await _applied(db) == 2
        assert relay.dead_lettered == 0  # refusals while it switched were retried, not set aside
        assert isinstance(relay._channel, FollowingChannel)
        assert relay._channel.reopened == 1
        assert relay._channel.tls.identity is not None
        assert relay._channel.tls.identity.certificate.serial_number != old.key_pair.certificate.serial_number
    finally:
        await tally.close()
        await aggregate.close()


async def test_publishs_channel_follows_its_renewed_reader_certificate(
    db_url: str, db: asyncpg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """publish reads aggregate through `caller_channel` with its credential file (services/publish/server.py):
    renewed in place and the old one revoked, the same channel reads on, with no restart."""
    monkeypatch.setattr(tls_module, "CLIENT_RECHECK_S", 0.0)  # look at the file before every call
    pki = suite_pki()
    bundle = tmp_path / "publish.pem"
    write_secret(bundle, pki.pki.issue_client("reader-old", "reader", election=TEST_ELECTION).bundle().decode())
    old = CertCredential.load(bundle)
    aggregate = await start_aggregate(db_url, db)
    internal = f"127.0.0.1:{aggregate.app.internal_port}"
    channel = caller_channel(f"127.0.0.1:{aggregate.app.internal_port}", TALLY_SETTINGS, load_credential(bundle))
    read = aggregate_pb2.GetAreaRequest(area="", contest="ppwp")
    try:
        await aggregate_stub(channel).GetArea(read)
        write_secret(bundle, pki.pki.issue_client("reader-new", "reader", election=TEST_ELECTION).bundle().decode())
        pki.pki.revoke("reader-old")
        async with pki.channel(internal, old) as old_channel:

            async def old_refused() -> bool:
                try:
                    await aggregate_stub(old_channel).GetArea(read)
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.PERMISSION_DENIED, exc
                    return True
                return False

            await poll_until(old_refused, "the old certificate refused")
        await aggregate_stub(channel).GetArea(read)  # the same channel, on the renewed certificate
        assert isinstance(channel, FollowingChannel) and channel.reopened == 1
    finally:
        await channel.close()
        await aggregate.close()


async def test_a_running_publish_uses_its_renewed_certificate_after_the_old_is_revoked(
    pipeline: Pipeline, site: Path, tmp_path: Path
) -> None:
    """`suara publish run` as a process: its reader certificate renewed in place and the old one revoked,
    it goes on publishing what aggregate and tally (the chain head) hold, without a restart."""
    pki = suite_pki()

    def issue(name: str) -> str:
        return pki.pki.issue_client(name, "reader", election=TEST_ELECTION).bundle().decode()

    bundle = tmp_path / "publish.pem"
    write_secret(bundle, issue("publish-renewal-old"))
    old = CertCredential.load(bundle)
    env = {**await pipeline.publish_env("publish-renewal", site, tmp_path), "SUARA_PUBLISH_CREDENTIAL": str(bundle)}
    tps = pipeline.tally_codes("ppwp")
    aggregate = f"127.0.0.1:{pipeline.aggregate.internal_port}"

    def published() -> tuple[int, int]:
        """TPS counted in the national ppwp file, and the chain position the pointer's signed head names."""
        try:
            national = json.loads((site / "pemilu/hhcw/ppwp.json").read_bytes())
            pointer = json.loads((site / "suara/snapshot.json").read_bytes())
        except (FileNotFoundError, ValueError):  # not yet published
            return 0, 0
        return national["progres"]["progres"], (pointer.get("chain_head") or {}).get("position", 0)

    async def chain_position() -> int:
        return int(await pipeline.db.fetchval("SELECT coalesce(max(chain_position), 0) FROM tally.submission"))

    await pipeline.submit(tps[0])
    await pipeline.delivered()
    async with running("publish", "run", "--port", "0", env=env, cwd=tmp_path) as child:

        async def shows(forms: int) -> bool:
            return published() == (forms, await chain_position())

        await poll_until(lambda: shows(1), "the first form published", STARTUP_S, check=child.assert_alive)

        write_secret(bundle, issue("publish-renewal-new"))
        pki.pki.revoke("publish-renewal-old")
        new_serial = CertCredential.load(bundle).key_pair.certificate.serial_number
        async with pki.channel(aggregate, old) as channel:  # the revocation is in force

            async def old_refused() -> bool:
                try:
                    await aggregate_stub(channel).GetArea(aggregate_pb2.GetAreaRequest(area="", contest="ppwp"))
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.PERMISSION_DENIED, exc
                    return True
                return False

            await poll_until(old_refused, "the old certificate refused")

        await pipeline.submit(tps[1])
        await pipeline.delivered()
        await poll_until(lambda: shows(2), "the form sent after the renewal published", check=child.assert_alive)
        await pipeline.check_site(site, contests=("ppwp",))
        reloaded = {e["address"]: e["serial"] for e in child.log.events() if e.get("event") == "tls_client_reloaded"}
        tally = f"127.0.0.1:{pipeline.tally.app.internal_port}"
        assert reloaded == {aggregate: f"{new_serial:x}", tally: f"{new_serial:x}"}, reloaded
        child.assert_alive()


def test_a_half_replaced_credential_is_not_taken_and_a_touched_one_is_not_renewed(tmp_path: Path) -> None:
    pki = suite_pki()
    bundle = tmp_path / "relay.pem"
    first = pki.pki.issue_client("renewal-unit-1", "writer", election=TEST_ELECTION)
    write_secret(bundle, first.bundle().decode())
    tls = ClientTls.from_files(pki.ca, bundle)
    assert tls.renewed() is None  # nothing changed
    second = pki.pki.issue_client("renewal-unit-2", "writer", election=TEST_ELECTION)
    write_secret(bundle, (second.cert_pem + first.key_pem).decode())  # the certificate written, not yet its key
    assert tls.changed() and tls.renewed() is None  # kept the old; looked at again next time
    write_secret(bundle, second.bundle().decode())
    renewed = tls.renewed()
    assert renewed is not None and renewed.identity == second
    write_secret(bundle, second.bundle().decode())  # the same content again: a new inode, nothing new
    assert renewed.changed() and renewed.renewed() is None
    assert not renewed.changed()  # the new stat remembered: no re-read at every look
