"""Prometheus metrics every suara process shares: RPCs, health, the database pool, and /metrics over HTTP.

The names are a contract (docs/metrics.md): alert rules and the dashboard query them. This module holds
what every service has; each service declares its own metrics beside its code. Everything is counted in
memory, cheaply, on the event loop; gauges that need a look at the database or a peer are refreshed when
Prometheus scrapes (`MetricsServer.add_refresh`), never per call.

One registry per process (prometheus-client's default, with its process_* and python_* collectors).
"""

from __future__ import annotations

import asyncio
import inspect
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Final, Protocol

import grpc
import structlog
from aiohttp import web
from google.protobuf import descriptor_pool
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = structlog.stdlib.get_logger("suara.metrics")

disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: twice the series for a time nobody queries

# Latency buckets (seconds) for calls and database work: a form's whole round trip is milliseconds
# when all is well and a second at the commit deadline; beyond that is a stuck call.
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REFRESH_TIMEOUT_S: Final = 2.0  # a scrape answers even when the database or a peer does not
REFRESH_MIN_INTERVAL_S: Final = 1.0  # two Prometheus servers scraping at once cost one refresh

RPC_HANDLED = Counter(
    "suara_grpc_server_handled",
    "RPCs completed on the server, by service, method and gRPC status code",
    ["service", "method", "code"],
)
RPC_SECONDS = Histogram(
    "suara_grpc_server_handling_seconds",
    "time from an RPC's start to its status, by service and method",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
)
SERVING = Gauge("suara_serving", "1 while the service's gRPC health is SERVING, else 0", ["service"])


def set_serving(service: str, serving: bool) -> None:
    SERVING.labels(service).set(1 if serving else 0)


# --- the gRPC server interceptor ------------------------------------------------------------------


class _Recorder:
    """The counter and histogram children of one method, looked up once (labels() takes a lock each time)."""

    __slots__ = ("_codes", "_method", "_service", "seconds")

    def __init__(self, service: str, method: str) -> None:
        self._service = service
        self._method = method
        self._codes: dict[str, Any] = {}
        self.seconds = RPC_SECONDS.labels(service, method)

    def ready(self) -> None:
        """Export this method's series now, at 0."""
        self._counter("OK")

    def _counter(self, code: str) -> Any:
        counter = self._codes.get(code)
        if counter is None:
            counter = self._codes[code] = RPC_HANDLED.labels(self._service, self._method, code)
        return counter

    def done(self, started: float, code: str) -> None:
        self.seconds.observe(time.perf_counter() - started)
        self._counter(code).inc()


def _code(context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None) -> str:
    """The status the call ends with: what the handler (or an abort) set, else OK, or UNKNOWN for an error
    gRPC turns into one, CANCELLED when the call was cancelled."""
    try:
        code = context.code()
    except Exception:  # not every context implementation keeps it
        code = None
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int) and code:
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status.name
    if error is None:
        return "OK"
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    return "UNKNOWN"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every RPC this server answers by method and status code, with its latency: unary and
    streaming alike. Put first, so that it sees the status of refusals the other interceptors make.
    A method the server does not have is not counted (gRPC answers UNIMPLEMENTED): callers must not be
    able to make up label values."""

    def __init__(self, service: str, services: Iterable[str] = ()) -> None:
        """`services`: the full names of the gRPC services served, whose methods are exported from the
        start (at 0), so that a rate over them exists before their first call."""
        self.service = service
        self._recorders: dict[str, _Recorder] = {}
        for name in services:
            try:
                described = descriptor_pool.Default().FindServiceByName(name)
            except KeyError:
                continue
            for method in described.methods:
                self._recorder(f"/{name}/{method.name}").ready()

    def _recorder(self, method: str) -> _Recorder:
        recorder = self._recorders.get(method)
        if recorder is None:
            recorder = self._recorders[method] = _Recorder(self.service, method.rsplit("/", 1)[-1])
        return recorder

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        recorder = self._recorder(handler_call_details.method)
        kwargs: dict[str, Any] = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_timed(handler.unary_unary, recorder), **kwargs)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(_timed(handler.stream_unary, recorder), **kwargs)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(_streamed(handler.unary_stream, recorder), **kwargs)
        assert handler.stream_stream is not None
        return grpc.stream_stream_rpc_method_handler(_streamed(handler.stream_stream, recorder), **kwargs)


def _timed(inner: Callable[..., Any], recorder: _Recorder) -> Callable[..., Any]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            return await inner(request, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            recorder.done(started, _code(context, error))

    return wrapper


def _streamed(inner: Callable[..., Any], recorder: _Recorder) -> Callable[..., Any]:
    """A streaming handler is either an async generator or a coroutine that writes on the context."""
    if not inspect.isasyncgenfunction(inner):
        return _timed(inner, recorder)

    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            async for response in inner(request, context):
                yield response
        except BaseException as exc:
            error = exc
            raise
        finally:
            recorder.done(started, _code(context, error))

    return wrapper


# --- the database pool ----------------------------------------------------------------------------


class Pool(Protocol):
    """What the pool gauges read: asyncpg's pool sizes and the acquires waiting (suara.runtime.database)."""

    waiting: int
    closed: bool

    def sizes(self) -> tuple[int, int, int]:
        """(connections open, of which idle, most allowed)."""
        ...


class _PoolCollector(Collector):
    """suara_db_pool_* of every pool a service of this process watches, read at scrape time."""

    def __init__(self) -> None:
        self.pools: list[tuple[str, weakref.ref[Pool]]] = []

    def watch(self, service: str, pool: Pool) -> None:
        self.pools = [(s, ref) for s, ref in self.pools if (p := ref()) is not None and not p.closed]
        self.pools.append((service, weakref.ref(pool)))

    def collect(self) -> Iterable[GaugeMetricFamily]:
        connections = GaugeMetricFamily(
            "suara_db_pool_connections", "PostgreSQL connections of the pool, by state", labels=["service", "state"]
        )
        most = GaugeMetricFamily("suara_db_pool_max_connections", "most connections the pool opens", labels=["service"])
        waiting = GaugeMetricFamily("suara_db_pool_waiting", "acquires waiting for a connection", labels=["service"])
        totals: dict[str, list[int]] = {}
        for service, ref in self.pools:
            pool = ref()
            if pool is None or pool.closed:
                continue
            size, idle, top = pool.sizes()
            total = totals.setdefault(service, [0, 0, 0, 0])
            for i, value in enumerate((size - idle, idle, top, pool.waiting)):
                total[i] += value
        for service, (in_use, idle, top, waits) in sorted(totals.items()):
            connections.add_metric([service, "in_use"], in_use)
            connections.add_metric([service, "idle"], idle)
            most.add_metric([service], top)
            waiting.add_metric([service], waits)
        yield connections
        yield most
        yield waiting


_POOLS = _PoolCollector()
REGISTRY.register(_POOLS)


def watch_pool(service: str, pool: Pool) -> None:
    """Export `pool`'s gauges under `service` until it is closed (several of one service add up)."""
    _POOLS.watch(service, pool)


# --- /metrics over HTTP ---------------------------------------------------------------------------

Refresh = Callable[[], Awaitable[None] | None]


class MetricsServer:
    """GET /metrics on `host:port` (0: any free port; `port` says which once started), on this event loop.

    Before answering, each refresh (`add_refresh`) runs, at most once a second and each within
    REFRESH_TIMEOUT_S: gauges that need a query (outbox depth, publish lag) are sampled then, so the cost
    follows the scrape interval, not the traffic. A refresh that fails leaves its gauges as they were."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._refreshes: list[Refresh] = []
        self._refreshed_at = float("-inf")
        self._lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def add_refresh(self, refresh: Refresh) -> None:
        self._refreshes.append(refresh)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("metrics_serving", url=self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._refreshed_at < REFRESH_MIN_INTERVAL_S:
                return
            for refresh in self._refreshes:
                try:
                    result = refresh()
                    if result is not None:
                        await asyncio.wait_for(result, REFRESH_TIMEOUT_S)
                except Exception as exc:
                    log.debug("metrics_refresh_failed", refresh=getattr(refresh, "__qualname__", "?"), error=repr(exc))
            self._refreshed_at = time.monotonic()

    async def _metrics(self, request: web.Request) -> web.Response:
        await self.refresh()
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
