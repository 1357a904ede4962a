"""Hostile bytes into every tally RPC: random, and valid requests mutated. Every reply is a precise
status (never INTERNAL or UNKNOWN), nothing new is stored, and tally keeps serving."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from suara.client import service_names
from suara.election.signing import DeviceKey
from suara.v1 import tally_pb2
from tests.support.factories import consistent_form, signed
from tests.support.fuzz import call_raw, mutated
from tests.support.rpc_errors import bad_fields
from tests.support.tally import Tally

SERVICE = service_names.TALLY


def _seeds(tally: Tally, key: DeviceKey, stored: tally_pb2.SubmitRequest) -> dict[str, bytes]:
    """A valid request of each method: the form one is already stored, so a mutation that keeps it
    valid is a DUPLICATE, never a new row."""
    other = DeviceKey.generate("0000000000000")
    return {
        "Submit": stored.SerializeToString(),
        "SubmitBatch": tally_pb2.SubmitBatchRequest(items=[stored, stored]).SerializeToString(),
        "GetSubmission": tally_pb2.GetSubmissionRequest(
            submission_id="00000000-0000-0000-0000-000000000000"
        ).SerializeToString(),
        "ListSubmissions": tally_pb2.ListSubmissionsRequest(tps=key.tps, page_size=2).SerializeToString(),
        "GetChainHead": b"",
        "GetPhoto": tally_pb2.GetPhotoRequest(sha256="0" * 64).SerializeToString(),
        # An enrollment that can never succeed (no such TPS), so that mutations enroll nobody.
        "EnrollDevice": tally_pb2.EnrollDeviceRequest(
            tps="0000000000000", public_key=other.public_key
        ).SerializeToString(),
        "EnrollDevices": tally_pb2.EnrollDevicesRequest(
            devices=[tally_pb2.EnrollDeviceRequest(tps="0000000000000", public_key=other.public_key)]
        ).SerializeToString(),
    }


METHODS = [m.name for m in SERVICE.methods]


@pytest.fixture
async def target(tally: Tally) -> tuple[Tally, dict[str, bytes]]:
    station = await tally.station()
    stored = signed(station.key, consistent_form(station.tps, "ppwp", tally.contests["ppwp"]))
    assert (await tally.stub.Submit(stored)).outcome == tally_pb2.OUTCOME_ACCEPTED
    seeds = _seeds(tally, station.key, stored)
    assert set(seeds) == set(METHODS), "a new RPC needs a seed here"
    return tally, seeds


async def _rows(tally: Tally) -> tuple[int, ...]:
    return tuple([await tally.count(t) for t in ("submission", "device", "photo", "outbox", "alarm")])


async def _call(tally: Tally, method: str, body: bytes, admin: bool) -> grpc.StatusCode:
    channel = tally.admin_channel if admin else tally.channel
    return await call_raw(channel, service_names.method_path(SERVICE, method), body)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(METHODS),
    admin=st.booleans(),
    choice=st.integers(0, 2),
    random_bytes=st.binary(max_size=512),
    data=st.data(),
)
async def test_hostile_bytes_get_a_precise_status_and_store_nothing(
    target: tuple[Tally, dict[str, bytes]],
    method: str,
    admin: bool,
    choice: int,
    random_bytes: bytes,
    data: st.DataObject,
) -> None:
    tally, seeds = target
    body = random_bytes if choice == 0 else data.draw(mutated(seeds[method]))
    before = await _rows(tally)
    await _call(tally, method, body, admin)
    assert await _rows(tally) == before
    # Still serving: the valid request of a read method is answered.
    assert await _call(tally, "GetChainHead", b"", False) == grpc.StatusCode.OK


async def test_a_nul_in_a_string_is_refused_naming_the_field(tally: Tally) -> None:
    station = await tally.station()
    request = tally_pb2.ListSubmissionsRequest(tps=station.tps, contest="pp\x00wp")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tally.admin.ListSubmissions(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == ["contest"]
    forged = signed(station.key, consistent_form(station.tps, "ppwp", tally.contests["ppwp"]))
    forged.form.device_id = "dev_\x00"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tally.stub.Submit(forged)
    assert bad_fields(err.value) == ["form.device_id"]
