"""tally's exceptions, each carrying the gRPC status it becomes at the edge."""

from __future__ import annotations

import grpc

from suara.runtime.errors import FieldProblem, ServiceError


class TallyError(ServiceError):
    code = grpc.StatusCode.INTERNAL


class InvalidForm(TallyError):
    """Malformed: nothing is stored. Every bad field is named."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: list[FieldProblem]) -> None:
        names = ", ".join(v.field for v in violations)
        super().__init__(f"the form is malformed ({names}); fix these fields and submit again", violations=violations)


class InvalidRequest(TallyError):
    """A bad admin request (not a form): nothing is stored. Every bad field is named."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: list[FieldProblem]) -> None:
        names = ", ".join(v.field for v in violations)
        super().__init__(f"the request is invalid ({names}); fix these fields and call again", violations=violations)


class Unauthenticated(TallyError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(TallyError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Conflict(TallyError):
    """Same (tps, contest, version), different payload: the original is kept."""

    code = grpc.StatusCode.ALREADY_EXISTS


class NotFound(TallyError):
    code = grpc.StatusCode.NOT_FOUND


class Overloaded(TallyError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DatabaseUnavailable(TallyError):
    """Not acknowledged: resending the same form later is safe (it is idempotent)."""

    code = grpc.StatusCode.UNAVAILABLE
