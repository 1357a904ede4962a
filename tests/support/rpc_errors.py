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


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """field → description of each field a google.rpc.BadRequest detail names."""
    status = rpc_status.from_call(error)
    assert status is not None, "expected rich status details"
    found: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.update((v.field, v.description) for v in bad.field_violations)
    return found


def retry_after_ms(error: grpc.aio.AioRpcError) -> int | None:
    """The google.rpc.RetryInfo delay of a refused call, in milliseconds; None without one."""
    status = rpc_status.from_call(error)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.seconds * 1000 + info.retry_delay.nanos // 1_000_000
    return None
