"""The root of every service's exception hierarchy, and how it becomes a gRPC status.

Each service subclasses ServiceError once (TallyError, AggregateError, …) and
raises precise subclasses; the server kit maps them at the edge, with a
google.rpc.BadRequest naming each bad field where there are any.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2


@dataclass(frozen=True)
class FieldProblem:
    field: str
    description: str


class ServiceError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        violations: list[FieldProblem] | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.violations = violations or []
        self.retry_after_ms = retry_after_ms

    def to_status(self) -> status_pb2.Status:
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        if self.violations:
            detail = any_pb2.Any()
            detail.Pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                        for v in self.violations
                    ]
                )
            )
            status.details.append(detail)
        if self.retry_after_ms is not None:
            detail = any_pb2.Any()
            detail.Pack(
                error_details_pb2.RetryInfo(
                    retry_delay={
                        "seconds": self.retry_after_ms // 1000,
                        "nanos": (self.retry_after_ms % 1000) * 1_000_000,
                    }
                )
            )
            status.details.append(detail)
        return status


assert grpc.StatusCode.INVALID_ARGUMENT.value[0] == code_pb2.INVALID_ARGUMENT
