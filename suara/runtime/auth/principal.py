"""Who is calling, once proven, and what proves it."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

import grpc


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: its credential id and the role it holds. How it was proven is not its concern."""

    id: str
    role: str


# The caller of the call being served, once the interceptor has proven it (None for an open method):
# what a handler records as who did an admin action.
CALLER: ContextVar[Principal | None] = ContextVar("suara_caller", default=None)


@dataclass(frozen=True)
class Call:
    """What an authenticator may look at: the method, the request, and the call's metadata and context."""

    method: str  # the full name, "/suara.v1.AggregateService/ApplyUpdates"
    request: Any
    metadata: Mapping[str, str | bytes]
    context: grpc.aio.ServicerContext[Any, Any]


class Authenticator(Protocol):
    """One way of proving who is calling."""

    name: str  # what a caller presents, as messages name it: "service credential", "admin credential"

    async def authenticate(self, call: Call) -> Principal:
        """The caller, proven; else Unauthenticated (no or bad proof), PermissionDenied, or Unavailable."""
        ...
