"""Waiting in tests, always bounded and failing with what was awaited.

Await what can be awaited (`within`); poll only what another process shows from outside — its
rows in the database, its files, its port, its gRPC health (`poll_until`, `until_serving`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

T = TypeVar("T")

WAIT_S = 60.0  # bound on anything a test awaits; normally a few seconds
STARTUP_S = 60.0  # bound on a `suara` child importing, connecting to PostgreSQL and binding its port
POLL_S = 0.01  # how often a bounded poll looks at another process's progress
HEALTH_CHECK_DEADLINE_S = 0.5
# Reconnect quickly while a child is (re)starting (gRPC's default first backoff is a whole second).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


def _nothing() -> None:
    return None


def _no_detail() -> str:
    return ""


def _failure(what: str, within_s: float, detail: Callable[[], str]) -> AssertionError:
    more = detail()
    return AssertionError(f"not {what} within {within_s}s" + (f":\n{more}" if more else ""))


async def within(
    awaitable: Awaitable[T], what: str, within_s: float = WAIT_S, detail: Callable[[], str] = _no_detail
) -> T:
    """What `awaitable` gives, if it comes within `within_s`; otherwise fails naming `what` (and `detail()`)."""
    try:
        return await asyncio.wait_for(awaitable, within_s)
    except TimeoutError:
        raise _failure(what, within_s, detail) from None


async def poll_until(
    condition: Callable[[], Awaitable[bool]],
    what: str,
    within_s: float = WAIT_S,
    check: Callable[[], None] = _nothing,
    *,
    detail: Callable[[], str] = _no_detail,
    interval_s: float = POLL_S,
) -> None:
    """A bounded poll, for progress another process makes that we can only see from outside.

    `check` runs before each look and fails the wait early (say, when the process died)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not await condition():
        check()
        if loop.time() >= deadline:
            raise _failure(what, within_s, detail)
        await asyncio.sleep(interval_s)


async def until_serving(
    channel: grpc.aio.Channel,
    service: str,
    within_s: float = STARTUP_S,
    check: Callable[[], None] = _nothing,
    *,
    detail: Callable[[], str] = _no_detail,
) -> None:
    """Until the gRPC health of `service` on `channel` is SERVING: a child process starting up.

    It binds its port at a moment we cannot await from outside, so this polls; each Check waits for the
    connection (wait_for_ready) for at most a short deadline, then asks again."""
    health = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service=service)

    async def serving() -> bool:
        try:
            reply = await health.Check(request, timeout=HEALTH_CHECK_DEADLINE_S, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            # NOT_FOUND: listening, but the service's health not set yet.
            if exc.code() not in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.NOT_FOUND,
            ):
                raise
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    await poll_until(serving, f"{service} SERVING", within_s, check, detail=detail)
