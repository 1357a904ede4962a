"""What a refused call carries: the fields its google.rpc.BadRequest detail names."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def bad_fields(error: grpc.aio.AioRpcError) -> list[str]:
    """The fields a google.rpc.BadRequest detail names, in order."""
    status = rpc_status.from_call(error)
    assert status is not None, "expected rich status details"
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.extend(v.field for v in bad.field_violations)
    return fields


def bad_field_descriptions(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """Each field a google.rpc.BadRequest detail names, with what it says is wrong."""
    status = rpc_status.from_call(error)
    assert status is not None, "expected rich status details"
    out: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out.update((v.field, v.description) for v in bad.field_violations)
    return out
