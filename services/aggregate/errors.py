"""aggregate's exceptions, each carrying the gRPC status it becomes at the edge."""

from __future__ import annotations

import grpc

from suara.runtime.errors import FieldProblem, ServiceError


class AggregateError(ServiceError):
    code = grpc.StatusCode.INTERNAL


class InvalidRequest(AggregateError):
    """Malformed request (for Apply*: nothing of the batch is written). Every bad field is named."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: list[FieldProblem]) -> None:
        names = ", ".join(v.field for v in violations[:10]) + (", …" if len(violations) > 10 else "")
        super().__init__(f"the request is malformed ({names}); nothing of it was applied", violations=violations)


class NotFound(AggregateError):
    code = grpc.StatusCode.NOT_FOUND


class DatabaseUnavailable(AggregateError):
    """Not applied as far as the caller knows: resending the same batch is safe (it is idempotent)."""

    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(AggregateError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(AggregateError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Conflict(AggregateError):
    """A recap version already stored with a different payload: the original is kept."""

    code = grpc.StatusCode.ALREADY_EXISTS
