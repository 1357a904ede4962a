"""The gRPC server kit every service uses.

`create_server()` returns (server, port) without serving, so tests bind :0 and
read the port. With TLS (the default) it binds a public listener (server-authenticated TLS: devices,
officials) and, for a service whose methods are certificate-authenticated, an internal listener
(mutual TLS: a client certificate signed by the deployment's CA is required) on `internal_port`; every
call on either must have negotiated TLS 1.3; `serve_until_signal()` runs an app until SIGTERM/SIGINT, whose
stop flips health to NOT_SERVING first and gives in-flight calls time to finish. One interceptor
binds request context for the logs and maps ServiceError to a rich status.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc
import structlog
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from suara.runtime import metrics
from suara.runtime.errors import FieldProblem, InvalidArgument, ResourceExhausted, ServiceError
from suara.runtime.tls import RequireTls13, ServerTls
from suara.runtime.wire import MAX_MESSAGE_BYTES, RETRY_AFTER_KEY, TRANSPORT_LIMITS

log = structlog.stdlib.get_logger("suara.grpc")


class _Status(grpc.Status):
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: tuple[tuple[str, Any], ...]) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], error: ServiceError) -> None:
    status = rpc_status.to_status(error.to_status())
    metadata = tuple(status.trailing_metadata)
    if error.retry_after_ms is not None:
        metadata += ((RETRY_AFTER_KEY, str(error.retry_after_ms)),)
    await context.abort_with_status(_Status(status.code, status.details, metadata))


_PROCESS = secrets.token_hex(4)  # request ids: unique across processes without a uuid4 (urandom) per call
_CALLS = itertools.count(1)


def _nul_field(message: Any, path: str = "") -> str | None:
    """The path of the first string field holding a NUL character, None if none. No text column
    (PostgreSQL's text) can hold one: such a request is refused at the edge, naming the field, instead
    of failing deep in a query."""
    for field, value in message.ListFields():
        where = f"{path}.{field.name}" if path else field.name
        if field.type == FieldDescriptor.TYPE_STRING:
            items = [value] if not field.is_repeated else list(value)
            if any("\x00" in item for item in items):
                return where
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                for key, item in value.items():
                    if isinstance(key, str) and "\x00" in key:
                        return f"{where}[{key!r}]"
                    if isinstance(item, str) and "\x00" in item:
                        return f"{where}[{key!r}]"
                    if hasattr(item, "ListFields") and (found := _nul_field(item, f"{where}[{key!r}]")):
                        return found
            else:
                items = list(value) if field.is_repeated else [value]
                for i, item in enumerate(items):
                    inner = f"{where}[{i}]" if field.is_repeated else where
                    if found := _nul_field(item, inner):
                        return found
    return None


class _Refused:
    """What the deserializer hands the handler instead of a request it would not parse."""

    def __init__(self, error: ServiceError) -> None:
        self.error = error


def _checked(
    method: str, deserialize: Callable[[bytes], Any] | None, limit: int | None
) -> Callable[[bytes], Any] | None:
    """`deserialize` behind this method's size limit, turning bytes it cannot parse into a precise refusal.

    gRPC refuses a message above the server-wide limit (the largest method's) before Python sees it; this
    holds each method to its own, before a byte is parsed. A request that does not parse is the caller's
    fault: INVALID_ARGUMENT, where gRPC itself would answer INTERNAL."""
    if deserialize is None:
        return None
    name = method.rsplit("/", 1)[-1]

    def checked(data: bytes) -> Any:
        if limit is not None and len(data) > limit:
            return _Refused(
                ResourceExhausted(
                    f"request of {len(data)} bytes is above {name}'s limit of {limit} bytes; "
                    "send less per call (see the client guide's limits)"
                )
            )
        try:
            request = deserialize(data)
        except Exception:  # protobuf's DecodeError, or anything a parser of hostile bytes raises
            return _Refused(InvalidArgument(f"the request is not a valid {name} request message"))
        if hasattr(request, "ListFields") and (field := _nul_field(request)) is not None:
            return _Refused(
                InvalidArgument(
                    f"the request's {field} holds a NUL character",
                    violations=[FieldProblem(field, "holds a NUL character (U+0000), which no field may")],
                )
            )
        return request

    return checked


class ContextInterceptor(grpc.aio.ServerInterceptor):
    """Request context in every log line of a call, ServiceError → gRPC status at the edge, and each
    method's request size limit (`limits`: full method path → bytes; others `default_limit`)."""

    def __init__(self, limits: Mapping[str, int] | None = None, default_limit: int | None = None) -> None:
        self.limits = dict(limits or {})
        self.default_limit = default_limit

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        metadata = dict(handler_call_details.invocation_metadata or ())
        inner = handler.unary_unary

        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            request_id = str(metadata.get("x-request-id") or f"{_PROCESS}-{next(_CALLS):x}")[:64]
            structlog.contextvars.bind_contextvars(request_id=request_id, method=method, peer=context.peer())
            started = time.perf_counter()
            try:
                if isinstance(request, _Refused):
                    raise request.error
                return await inner(request, context)  # type: ignore[arg-type]  # aio handlers take aio contexts
            except ServiceError as error:
                log.info(
                    "rpc_error",
                    code=error.code.name,
                    error=error.message,
                    ms=round((time.perf_counter() - started) * 1000, 2),
                )
                await abort_with(context, error)
            except asyncio.CancelledError:
                raise
            except Exception:
                if context.code() is not None:  # an abort() already decided the status
                    raise
                log.exception("rpc_failed")
                await context.abort(grpc.StatusCode.INTERNAL, "internal error; the request id is " + request_id)
            finally:
                structlog.contextvars.unbind_contextvars("request_id", "method", "peer")

        return grpc.unary_unary_rpc_method_handler(
            wrapper,
            request_deserializer=_checked(
                method, handler.request_deserializer, self.limits.get(method, self.default_limit)
            ),
            response_serializer=handler.response_serializer,
        )


class Server:
    """A grpc.aio server with health and reflection, not yet serving."""

    def __init__(
        self,
        server: grpc.aio.Server,
        health_servicer: health.aio.HealthServicer,
        services: Sequence[str],
        metrics_service: str | None = None,
    ):
        self.grpc = server
        self.health = health_servicer
        self.services = list(services)
        self.internal_port: int | None = None  # the mutual-TLS listener's port, when there is one
        self.metrics_service = metrics_service  # suara_serving's label; None: no metrics

    async def start(self) -> None:
        await self.grpc.start()
        await self.set_serving(True)

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self.services]:
            await self.health.set(name, status)
        if self.metrics_service is not None:
            metrics.set_serving(self.metrics_service, serving)

    async def stop(self, grace: float) -> None:
        """NOT_SERVING first (load balancers drain), then let in-flight calls finish."""
        await self.set_serving(False)
        await self.grpc.stop(grace)


def create_server(
    register: Callable[[grpc.aio.Server], None],
    service_names: Sequence[str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    reuse_port: bool = False,
    request_limits: Mapping[str, int] | None = None,
    default_request_limit: int | None = None,
    tls: ServerTls | None = None,
    internal_port: int | None = None,
    metrics_service: str | None = None,
) -> tuple[Server, int]:
    """`reuse_port`: several processes may serve one port (the kernel spreads connections among them);
    off by default so that a port already taken is an error, not a silent second server.

    `request_limits` (full method path → bytes, others `default_request_limit`) bound each method's
    requests; gRPC itself refuses anything above the largest of them (decompressed size: a gzip bomb
    is cut off there) before reading it whole. Without them, MAX_MESSAGE_BYTES.

    `tls` None serves plaintext (explicitly insecure: SUARA_INSECURE). `internal_port` (0: any free
    one) adds the internal listener: mutual TLS, or a second plaintext port when insecure, so that
    callers' addresses are the same either way.

    `metrics_service` (tally, aggregate, publish) counts every call under that label (suara.runtime.metrics;
    first, so refusals by the other interceptors count too) and keeps suara_serving with health."""
    limits = [*(request_limits or {}).values(), *([default_request_limit] if default_request_limit else [])]
    receive = max(limits) if limits else MAX_MESSAGE_BYTES
    server = grpc.aio.server(
        interceptors=[
            *([metrics.MetricsInterceptor(metrics_service, service_names)] if metrics_service is not None else []),
            *([RequireTls13()] if tls is not None else []),
            ContextInterceptor(request_limits, default_request_limit),
            *interceptors,
        ],
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", receive),
            *TRANSPORT_LIMITS,
            ("grpc.so_reuseport", int(reuse_port)),
        ],
    )
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*service_names, reflection.SERVICE_NAME, health.SERVICE_NAME], server)
    if tls is None:
        bound = server.add_insecure_port(f"{host}:{port}")
    else:
        bound = server.add_secure_port(f"{host}:{port}", tls.credentials(require_client_auth=False))
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    result = Server(server, health_servicer, service_names, metrics_service)
    if internal_port is not None:
        address = f"{host}:{internal_port}"
        if tls is None:
            result.internal_port = server.add_insecure_port(address)
        else:
            result.internal_port = server.add_secure_port(address, tls.credentials(require_client_auth=True))
        if result.internal_port == 0:
            raise OSError(f"cannot bind {address}")
    return result, bound


async def serve_until_signal(
    start: Callable[[], Awaitable[None]], stop: Callable[[float], Awaitable[None]], grace: float
) -> None:
    """Run `start`, serve until SIGTERM or SIGINT, then `stop(grace)`: the app's one way of shutting down."""
    signalled = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signalled.set)
    await start()
    await signalled.wait()
    log.info("shutting_down", grace_s=grace)
    await stop(grace)
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(sig)


async def serve_with_metrics(
    start: Callable[[], Awaitable[None]],
    stop: Callable[[float], Awaitable[None]],
    grace: float,
    exporter: metrics.MetricsServer | None,
    refresh: metrics.Refresh | None = None,
) -> None:
    """`serve_until_signal` with the process's metrics server (None: metrics off) started first, so it is
    bound before health says SERVING (`suara up` may scrape at once), and stopped after the app."""

    async def start_all() -> None:
        if exporter is not None:
            if refresh is not None:
                exporter.add_refresh(refresh)
            await exporter.start()
        await start()

    async def stop_all(grace: float) -> None:
        await stop(grace)
        if exporter is not None:
            await exporter.stop()

    await serve_until_signal(start_all, stop_all, grace)
