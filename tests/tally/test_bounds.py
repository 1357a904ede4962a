"""What tally refuses before it stores anything: unknown fields in a signed form, versions past the cap,
more live device keys per TPS than the cap."""

from __future__ import annotations

import grpc
import pytest

from services.tally.access import create_admin_credential
from suara.election.signing import DeviceKey
from suara.v1 import form_pb2, tally_pb2
from tests.support.factories import TEST_ELECTION, consistent_form, signed
from tests.support.fuzz import length_delimited
from tests.support.rpc_errors import bad_fields, violations
from tests.support.tally import Tally

# The caps as the domain rules state them (docs/domain.md), written out: the oracle.
VERSION_CAP = 100
DEVICE_CAP = 5


def _signed_payload(key: DeviceKey, payload: bytes) -> tally_pb2.SubmitRequest:
    return tally_pb2.SubmitRequest(
        form=form_pb2.SignedForm(payload=payload, signature=key.sign(payload), device_id=key.device_id)
    )


async def test_a_signed_form_with_unknown_fields_is_refused_naming_them(tally: Tally) -> None:
    station = await tally.station()
    form = consistent_form(station.tps, "ppwp", tally.contests["ppwp"])
    junk = length_delimited(501, b"x" * (1 << 20)) + length_delimited(777, b"y")
    # A VoterCount with a field of its own nobody defined: nested messages are checked too.
    nested = length_delimited(8, form.pemilih_dpt.SerializeToString() + length_delimited(9, b"z"))
    for extra, names in ((junk, ["#501", "#777"]), (nested, ["pemilih_dpt.#9"])):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await tally.stub.Submit(_signed_payload(station.key, form.SerializeToString() + extra))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_fields(err.value) == ["form.payload"]
        for name in names:
            assert name in violations(err.value)["form.payload"]
    assert await tally.count("submission") == 0
    accepted = await tally.stub.Submit(signed(station.key, form))  # the same form without them
    assert accepted.outcome == tally_pb2.OUTCOME_ACCEPTED


async def test_versions_are_capped(tally: Tally) -> None:
    station = await tally.station()
    choices = tally.contests["ppwp"]
    top = await tally.stub.Submit(signed(station.key, consistent_form(station.tps, "ppwp", choices, VERSION_CAP)))
    assert top.outcome == tally_pb2.OUTCOME_ACCEPTED
    for version in (VERSION_CAP + 1, 2**31 - 1):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await tally.stub.Submit(signed(station.key, consistent_form(station.tps, "ppwp", choices, version)))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_fields(err.value) == ["version"]
        assert f"between 1 and {VERSION_CAP}" in violations(err.value)["version"]
    assert await tally.count("submission") == 1


async def test_live_devices_per_tps_are_capped(tally: Tally) -> None:
    credential = await create_admin_credential(tally.db, "test")
    auth = (("authorization", f"Bearer {credential.token}"),)
    tps = tally.tps_codes.pop()
    keys = [DeviceKey.generate(tps) for _ in range(DEVICE_CAP + 1)]
    for key in keys[:DEVICE_CAP]:
        await tally.admin.EnrollDevice(tally_pb2.EnrollDeviceRequest(tps=tps, public_key=key.public_key), metadata=auth)
    # Enrolling a key already there again is no new device.
    await tally.admin.EnrollDevice(tally_pb2.EnrollDeviceRequest(tps=tps, public_key=keys[0].public_key), metadata=auth)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tally.admin.EnrollDevice(
            tally_pb2.EnrollDeviceRequest(tps=tps, public_key=keys[-1].public_key), metadata=auth
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert bad_fields(err.value) == ["tps"]
    assert f"cap of {DEVICE_CAP}" in violations(err.value)["tps"]
    other = DeviceKey.generate(tally.tps_codes.pop())
    batch = tally_pb2.EnrollDevicesRequest(
        devices=[tally_pb2.EnrollDeviceRequest(tps=k.tps, public_key=k.public_key) for k in (other, keys[-1])]
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tally.admin.EnrollDevices(batch, metadata=auth)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert bad_fields(err.value) == ["devices[1].tps"]
    assert await tally.count("device") == DEVICE_CAP, "a refused batch enrolls nobody"
    # A revoked key frees its slot: a lost phone is replaced.
    await tally.db.execute("UPDATE tally.device SET revoked_at = now() WHERE device_id = $1", keys[0].device_id)
    await tally.admin.EnrollDevice(
        tally_pb2.EnrollDeviceRequest(tps=tps, public_key=keys[-1].public_key), metadata=auth
    )


async def test_a_form_of_another_election_is_refused_naming_both(tally: Tally) -> None:
    station = await tally.station()
    choices = tally.contests["ppwp"]
    for other in ("gladi-2024", ""):  # a rehearsal's form, and one that names no election
        form = consistent_form(station.tps, "ppwp", choices, election_id=other)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await tally.stub.Submit(signed(station.key, form))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert bad_fields(err.value) == ["election_id"]
        said = violations(err.value)["election_id"]
        assert repr(TEST_ELECTION) in said and (repr(other) if other else "no election") in said
        batch = await tally.stub.SubmitBatch(tally_pb2.SubmitBatchRequest(items=[signed(station.key, form)]))
        assert batch.results[0].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert await tally.count("submission") == 0
    accepted = await tally.stub.Submit(signed(station.key, consistent_form(station.tps, "ppwp", choices)))
    assert accepted.outcome == tally_pb2.OUTCOME_ACCEPTED


async def test_enrollment_names_the_election(tally: Tally) -> None:
    key = DeviceKey.generate(tally.tps_codes.pop())
    reply = await tally.admin.EnrollDevice(tally_pb2.EnrollDeviceRequest(tps=key.tps, public_key=key.public_key))
    assert reply.election_id == TEST_ELECTION
