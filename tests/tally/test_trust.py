"""Signatures and device binding: forged, foreign, tampered and replayed forms are refused; nothing is stored."""

from __future__ import annotations

import grpc
import pytest

from services.tally.intake import INLINE_VERIFY
from suara.election.signing import DeviceKey
from suara.v1 import tally_pb2
from tests.support.factories import consistent_form, signed
from tests.support.tally import Tally


async def _refused(tally: Tally, request: tally_pb2.SubmitRequest) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tally.stub.Submit(request)
    assert await tally.count("submission") == 0, "a refused form must leave nothing behind"
    assert await tally.count("outbox") == 0
    return err.value.code()


async def test_forged_signature_is_unauthenticated(tally: Tally) -> None:
    st = await tally.station()
    request = signed(st.key, consistent_form(st.tps, "ppwp", tally.contests["ppwp"]))
    request.form.signature = DeviceKey.generate(st.tps).sign(request.form.payload)  # a key nobody enrolled
    assert await _refused(tally, request) == grpc.StatusCode.UNAUTHENTICATED


async def test_unknown_device_is_unauthenticated(tally: Tally) -> None:
    tps = tally.tps_codes.pop()
    stranger = DeviceKey.generate(tps)
    request = signed(stranger, consistent_form(tps, "ppwp", tally.contests["ppwp"]))
    assert await _refused(tally, request) == grpc.StatusCode.UNAUTHENTICATED


async def test_another_tps_key_is_permission_denied(tally: Tally) -> None:
    mine, theirs = await tally.station(), await tally.station()
    request = signed(theirs.key, consistent_form(mine.tps, "ppwp", tally.contests["ppwp"]))
    assert await _refused(tally, request) == grpc.StatusCode.PERMISSION_DENIED


async def test_tampered_payload_is_unauthenticated(tally: Tally) -> None:
    st = await tally.station()
    form = consistent_form(st.tps, "ppwp", tally.contests["ppwp"])
    request = signed(st.key, form)
    form.votes[tally.contests["ppwp"][0]] += 100
    request.form.payload = form.SerializeToString()  # the numbers changed after signing
    assert await _refused(tally, request) == grpc.StatusCode.UNAUTHENTICATED


async def test_payload_replayed_under_another_tps_device_is_unauthenticated(tally: Tally) -> None:
    a, b = await tally.station(), await tally.station()
    request = signed(a.key, consistent_form(a.tps, "ppwp", tally.contests["ppwp"]))
    request.form.device_id = b.key.device_id  # A's signed bytes presented as B's
    assert await _refused(tally, request) == grpc.StatusCode.UNAUTHENTICATED


async def test_structurally_broken_request_names_each_field(tally: Tally) -> None:
    from tests.support.rpc_errors import bad_fields

    request = tally_pb2.SubmitRequest()
    request.form.payload = b""
    request.form.signature = b"short"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tally.stub.Submit(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == ["form.payload", "form.signature", "form.device_id"]


async def test_in_plaintext_enroll_device_needs_an_admin_bearer_token(insecure_tally: Tally) -> None:
    """SUARA_INSECURE (debugging only): the admin's bearer token is the proof, on either port."""
    from services.tally.access import create_admin_credential

    tally = insecure_tally
    tps = tally.tps_codes.pop()
    key = DeviceKey.generate(tps)
    enroll = tally_pb2.EnrollDeviceRequest(tps=tps, public_key=key.public_key)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tally.stub.EnrollDevice(enroll)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tally.stub.EnrollDevice(enroll, metadata=(("authorization", "Bearer not-a-token"),))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

    credential = await create_admin_credential(tally.db, "test")
    auth = (("authorization", f"Bearer {credential.token}"),)
    response = await tally.stub.EnrollDevice(enroll, metadata=auth)
    assert (response.device_id, response.tps) == (key.device_id, tps)
    accepted = await tally.stub.Submit(signed(key, consistent_form(tps, "ppwp", tally.contests["ppwp"])))
    assert accepted.outcome == tally_pb2.OUTCOME_ACCEPTED

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tally.stub.EnrollDevice(tally_pb2.EnrollDeviceRequest(tps="123", public_key=b"x"), metadata=auth)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_only_the_enroll_and_submission_read_methods_ask_for_a_certificate(tally: Tally) -> None:
    service = tally_pb2.DESCRIPTOR.services_by_name["TallyService"]
    asking = set()
    for method in service.methods:
        request = getattr(tally_pb2, method.input_type.name)()  # empty: refused or answered, never stored
        try:
            await getattr(tally.stub, method.name)(request)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                assert "needs a client certificate" in str(err.details())
                asking.add(method.name)
    assert asking == {"EnrollDevice", "EnrollDevices", "GetSubmission", "ListSubmissions"}


@pytest.mark.parametrize("size", [INLINE_VERIFY, INLINE_VERIFY + 3], ids=["verified-inline", "verified-in-threads"])
async def test_a_forged_item_in_a_batch_is_refused_alone_on_either_verification_path(tally: Tally, size: int) -> None:
    stations = [await tally.station() for _ in range(size)]
    items = [signed(st.key, consistent_form(st.tps, "ppwp", tally.contests["ppwp"])) for st in stations]
    forged = size // 2
    items[forged].form.signature = DeviceKey.generate(stations[forged].tps).sign(items[forged].form.payload)
    response = await tally.stub.SubmitBatch(tally_pb2.SubmitBatchRequest(items=items))
    outcomes = [tally_pb2.Outcome.Name(r.outcome).removeprefix("OUTCOME_") for r in response.results]
    assert outcomes == ["REJECTED" if i == forged else "ACCEPTED" for i in range(size)]
    assert response.results[forged].error.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    stored = {r["tps"] for r in await tally.db.fetch("SELECT tps FROM tally.submission")}
    assert stored == {st.tps for i, st in enumerate(stations) if i != forged}
