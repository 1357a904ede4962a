"""EnrollDevices: a provisioning run registers up to 1,000 keys in one transaction, all of them or none."""

from __future__ import annotations

import grpc
import pytest

from suara.election.signing import DeviceKey
from suara.v1 import tally_pb2
from tests.support.factories import consistent_form, signed
from tests.support.rpc_errors import bad_fields
from tests.support.tally import Tally

Auth = tuple[tuple[str, str], ...]


async def _auth(tally: Tally) -> Auth:
    """Nothing in the metadata: `tally.admin` calls the internal listener with an admin's certificate."""
    return ()


def _request(keys: list[DeviceKey]) -> tally_pb2.EnrollDevicesRequest:
    return tally_pb2.EnrollDevicesRequest(
        devices=[tally_pb2.EnrollDeviceRequest(tps=k.tps, public_key=k.public_key, label="run") for k in keys]
    )


async def _refused(tally: Tally, request: tally_pb2.EnrollDevicesRequest, auth: Auth) -> list[str]:
    before = await tally.count("device")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tally.admin.EnrollDevices(request, metadata=auth)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await tally.count("device") == before, "a refused run must enroll nobody"
    return bad_fields(err.value)


async def test_enrolls_every_key_in_order_and_each_can_submit(tally: Tally) -> None:
    auth = await _auth(tally)
    keys = [DeviceKey.generate(tally.tps_codes.pop()) for _ in range(5)]
    response = await tally.admin.EnrollDevices(_request(keys), metadata=auth)
    assert [(d.device_id, d.tps) for d in response.devices] == [(k.device_id, k.tps) for k in keys]
    rows = await tally.db.fetch("SELECT device_id, tps, public_key, label FROM tally.device")
    assert {(r["device_id"], r["tps"], bytes(r["public_key"]), r["label"]) for r in rows} == {
        (k.device_id, k.tps, k.public_key, "run") for k in keys
    }
    for key in keys:
        receipt = await tally.stub.Submit(signed(key, consistent_form(key.tps, "ppwp", tally.contests["ppwp"])))
        assert receipt.outcome == tally_pb2.OUTCOME_ACCEPTED

    again = await tally.admin.EnrollDevices(_request(keys), metadata=auth)  # a rerun of the same provisioning
    assert list(again.devices) == list(response.devices)
    assert await tally.count("device") == len(keys)


async def test_needs_an_admin_credential(tally: Tally) -> None:
    request = _request([DeviceKey.generate(tally.tps_codes.pop())])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tally.stub.EnrollDevices(request)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await tally.count("device") == 0


async def test_every_bad_device_is_named_and_nobody_is_enrolled(tally: Tally) -> None:
    auth = await _auth(tally)
    good, unknown, short, repeated = (DeviceKey.generate(tally.tps_codes.pop()) for _ in range(4))
    request = _request([good, unknown, short, repeated, repeated])
    request.devices[1].tps = "9999999999999"
    request.devices[2].public_key = b"short"
    assert await _refused(tally, request, auth) == ["devices[1].tps", "devices[2].public_key", "devices[4].public_key"]


async def test_a_key_enrolled_for_another_tps_refuses_the_whole_run(tally: Tally) -> None:
    auth = await _auth(tally)
    taken = await tally.station()
    fresh = DeviceKey.generate(tally.tps_codes.pop())
    request = _request([fresh, taken.key])
    request.devices[1].tps = tally.tps_codes.pop()  # the same key, claimed for a second TPS
    assert await _refused(tally, request, auth) == ["devices[1].public_key"]


@pytest.mark.parametrize("size", [0, 1001])
async def test_the_run_size_is_bounded(tally: Tally, size: int) -> None:
    auth = await _auth(tally)
    keys = [DeviceKey.generate(tally.tps_codes[i % len(tally.tps_codes)]) for i in range(size)]
    assert await _refused(tally, _request(keys), auth) == ["devices"]
