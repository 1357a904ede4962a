"""Per-device and per-peer rate limits: RESOURCE_EXHAUSTED with a retry hint beyond them, never for a
real KPPS device, and a forger cannot spend a device's budget."""

from __future__ import annotations

import asyncpg
import grpc
import pytest

from suara.election.signing import DeviceKey
from suara.runtime.settings import Settings
from suara.runtime.wire import RETRY_AFTER_KEY
from suara.v1 import tally_pb2
from tests.support.factories import consistent_form, signed
from tests.support.rpc_errors import retry_after_ms
from tests.support.tally import BASE_SETTINGS, Tally, start_tally, with_tally


def _hint(error: grpc.aio.AioRpcError) -> int:
    """The retry-after the metadata gives; it must agree with google.rpc.RetryInfo."""
    metadata = dict(error.trailing_metadata() or ())
    hint = int(metadata[RETRY_AFTER_KEY])
    assert retry_after_ms(error) == hint
    return hint


async def test_a_real_devices_night_never_meets_the_defaults(tally: Tally) -> None:
    station = await tally.station()
    contests = await tally.db.fetch("SELECT id FROM registry.contest WHERE starts_with($1, scope)", station.tps)
    # Every contest, signed, corrected twice, each sent three times (lost replies), in one go.
    requests = [
        signed(station.key, consistent_form(station.tps, r["id"], tally.contests[r["id"]], version))
        for r in contests
        for version in (1, 2, 3)
    ]
    for _ in range(3):
        for request in requests:
            assert (await tally.stub.Submit(request)).outcome != tally_pb2.OUTCOME_REJECTED
    reply = await tally.stub.SubmitBatch(tally_pb2.SubmitBatchRequest(items=requests))
    assert all(r.outcome != tally_pb2.OUTCOME_REJECTED for r in reply.results)


async def test_a_flooding_device_is_held_to_its_burst_then_its_rate(tally: Tally) -> None:
    station = await tally.station()
    burst = Settings().tally.device_burst  # the documented defaults
    contests = [c for c in tally.contests if c != "pkwkp"]  # held at every TPS outside DKI Jakarta
    items = [
        signed(station.key, consistent_form(station.tps, c, tally.contests[c], version))
        for c in contests
        for version in range(1, 101)
    ]
    assert len(items) > burst
    reply = await tally.stub.SubmitBatch(tally_pb2.SubmitBatchRequest(items=items))
    refused = [r for r in reply.results if r.outcome == tally_pb2.OUTCOME_REJECTED]
    assert len(items) - len(refused) <= burst + 1  # the rate refills a token while the batch runs, at most
    assert all(r.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] for r in refused)
    assert all(r.error.retry_after_ms > 0 for r in refused)
    assert "SUARA_TALLY_DEVICE_BURST" in refused[0].error.message
    assert await tally.count("submission") == len(items) - len(refused)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tally.stub.Submit(items[-1])
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert 0 < _hint(err.value) <= 60_000 / Settings().tally.device_rate_per_min + 1


async def test_forged_forms_do_not_spend_a_devices_budget(db_url: str, db: asyncpg.Connection) -> None:
    t = await start_tally(db_url, db, with_tally(BASE_SETTINGS, device_burst=2, device_rate_per_min=0.01))
    try:
        station = await t.station()
        forged = signed(DeviceKey.generate(station.tps), consistent_form(station.tps, "ppwp", t.contests["ppwp"]))
        forged.form.device_id = station.key.device_id  # names the device, signed by another key
        for _ in range(5):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await t.stub.Submit(forged)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        for version in (1, 2):
            form = consistent_form(station.tps, "ppwp", t.contests["ppwp"], version)
            assert (await t.stub.Submit(signed(station.key, form))).outcome == tally_pb2.OUTCOME_ACCEPTED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await t.stub.Submit(signed(station.key, consistent_form(station.tps, "ppwp", t.contests["ppwp"], 3)))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _hint(err.value) > 1000
    finally:
        await t.close()


async def test_one_address_is_held_to_the_peer_limit(db_url: str, db: asyncpg.Connection) -> None:
    t = await start_tally(db_url, db, with_tally(BASE_SETTINGS, peer_burst=5, peer_rate=0.01))
    try:
        for _ in range(5):
            await t.stub.GetChainHead(tally_pb2.GetChainHeadRequest())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await t.stub.GetChainHead(tally_pb2.GetChainHeadRequest())
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "SUARA_TALLY_PEER_RATE" in (err.value.details() or "")
        assert _hint(err.value) > 1000
    finally:
        await t.close()


@pytest.mark.parametrize("trusted", ["127.0.0.1", ""])
async def test_behind_a_trusted_proxy_each_forwarded_address_has_its_own_bucket(
    db_url: str, db: asyncpg.Connection, trusted: str
) -> None:
    """Envoy appends the address it saw to x-forwarded-for; only a trusted proxy's header is believed."""
    settings = with_tally(BASE_SETTINGS, peer_burst=3, peer_rate=0.01, trusted_proxies=trusted)
    t = await start_tally(db_url, db, settings)

    async def head(forwarded: str) -> None:
        metadata = (("x-forwarded-for", forwarded),)
        await t.stub.GetChainHead(tally_pb2.GetChainHeadRequest(), metadata=metadata)

    try:
        for _ in range(3):
            await head("198.51.100.7, 10.0.0.1")  # the last entry is the one the proxy saw
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await head("10.0.0.1")
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        if trusted:
            await head("10.0.0.2")  # another device behind the proxy: its own bucket
            assert "10.0.0.1" in (err.value.details() or "")
        else:
            with pytest.raises(grpc.aio.AioRpcError) as spoofed:
                await head("10.0.0.2")  # a header of the caller's own choosing buys nothing
            assert spoofed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await t.close()
