"""The root of every exception a caller is told about, one class per gRPC status, and how it becomes one.

Services raise these (or their own subclasses, for a message of their own); the
server kit (suara.runtime.grpc_server) maps them at the edge, with a
google.rpc.BadRequest naming each bad field where there are any, and a
google.rpc.RetryInfo (and `retry-after-ms` metadata) where a retry hint is given.
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
    """A failure the caller is told about as gRPC status `code`: INTERNAL unless a subclass says otherwise."""

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


class Internal(ServiceError):
    """Our fault, not the request's: nothing was done, and the same request may succeed later."""


class InvalidArgument(ServiceError):
    """The request is malformed and nothing of it was done; `violations` names every bad field."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class Unauthenticated(ServiceError):
    """Who is calling could not be established: no credential, a bad one, or an unknown one."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    """The caller is known, but may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    """Something else is already stored under this key; the original is kept."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    """Well-formed, but the system is not in a state to take it (another election, a cap reached);
    `violations` names the fields, and resending the same request will not help."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    """Overloaded: refused before any work; retry after `retry_after_ms`."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    """Not done as far as the caller can know; resending later (after `retry_after_ms`, if given) is the remedy."""

    code = grpc.StatusCode.UNAVAILABLE


assert grpc.StatusCode.INVALID_ARGUMENT.value[0] == code_pb2.INVALID_ARGUMENT
