"""Traces: OpenTelemetry, configured by the standard OTEL_* variables, and off unless an exporter is set.

Off (no OTEL_TRACES_EXPORTER nor OTLP endpoint, or `none`, or OTEL_SDK_DISABLED=true) nothing is patched: gRPC and
asyncpg run their own code, and every helper here returns at its first line (`_tracer` is None).
On, gRPC servers and channels made from then on (OpenTelemetry's gRPC instrumentation) and every
asyncpg query (its asyncpg instrumentation) make spans, and suara adds its own where one piece of
work serves many forms: the group commit (`batch_span`, linked to the Submit spans it answers), the
relay's delivery (linked to the commits of the rows it carries, whose trace context the outbox row
keeps), aggregate's apply and publish's cycle (linked to the applies whose changes it published, whose
trace context aggregate keeps with their change sequence).

In a service process a root span of kind CLIENT is not sampled (`quiet_client_roots`): those are
the pollers (the relay's idle outbox reads, publish's look for changes every interval), whose spans
would bury the forms' traces. Work that matters starts with a server span or one of ours.

The tracer provider is not made the global one: each Tracing passes its own to the instrumentations,
so tests can configure, shut down and configure again in one process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from suara.runtime.queries import name_of
from suara.runtime.settings import SettingError

EXPORTERS: Final = ("otlp", "console")
SAMPLERS: Final = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
# The services' own housekeeping calls: never worth a trace.
_UNTRACED_SERVICES: Final = ("grpc.health.v1.", "grpc.reflection.")
_PROPAGATOR: Final = TraceContextTextMapPropagator()

_tracer: Tracer | None = None  # None: tracing is off


def enabled() -> bool:
    return _tracer is not None


def exporters_from(environ: Mapping[str, str]) -> list[str]:
    """The span exporters the OTEL_* variables ask for; [] means tracing is off.

    Unlike the SDK's own default (otlp), no OTEL_TRACES_EXPORTER means off, unless an OTLP endpoint is
    set: a deployment that names a collector wants its traces."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    raw = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not raw:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return ["otlp"] if endpoint else []
    names = [n.strip() for n in raw.split(",") if n.strip()]
    if names == ["none"]:
        return []
    for name in names:
        if name not in EXPORTERS:
            raise SettingError("OTEL_TRACES_EXPORTER", raw, "none or a comma-separated list of " + ", ".join(EXPORTERS))
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    if "otlp" in names and protocol != "grpc":
        raise SettingError("OTEL_EXPORTER_OTLP_PROTOCOL", protocol, "grpc (the OTLP exporter suara ships)")
    return list(dict.fromkeys(names))


def _sampler(environ: Mapping[str, str], quiet_client_roots: bool) -> sampling.Sampler:
    """OTEL_TRACES_SAMPLER (and _ARG), as the SDK reads them; quiet, always parent-based: a service
    follows its caller's decision."""
    name = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if name not in SAMPLERS:
        raise SettingError("OTEL_TRACES_SAMPLER", name, "one of " + ", ".join(SAMPLERS))
    ratio = 1.0
    if name.endswith("traceidratio"):
        raw = environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0")
        try:
            ratio = float(raw)
        except ValueError:
            raise SettingError("OTEL_TRACES_SAMPLER_ARG", raw, "a ratio between 0 and 1") from None
        if not 0.0 <= ratio <= 1.0:
            raise SettingError("OTEL_TRACES_SAMPLER_ARG", raw, "a ratio between 0 and 1")
    roots: sampling.Sampler = {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "traceidratio": sampling.TraceIdRatioBased(ratio),
    }[name.removeprefix("parentbased_")]
    if quiet_client_roots:
        roots = _QuietClientRoots(roots)
    return sampling.ParentBased(roots) if name.startswith("parentbased_") or quiet_client_roots else roots


class _QuietClientRoots(sampling.Sampler):
    """Drops a root span of kind CLIENT (a poller's query or call outside any traced work); the rest
    goes to `inner`."""

    def __init__(self, inner: sampling.Sampler) -> None:
        self._inner = inner

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Any = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> sampling.SamplingResult:
        if kind == SpanKind.CLIENT:
            return sampling.SamplingResult(sampling.Decision.DROP)
        return self._inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"QuietClientRoots{{{self._inner.get_description()}}}"


class _QueryNames(SpanProcessor):
    """Names a query's span after the query (asyncpg's instrumentation names it by its first word, which
    for suara's queries is their leading comment, `--`)."""

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        attributes = span.attributes or {}
        text = attributes.get("db.statement") or attributes.get("db.query.text")
        if isinstance(text, str) and (name := name_of(text)) is not None:
            span.update_name(name)
            span.set_attribute("db.query.summary", name)


@dataclass
class Tracing:
    """Tracing as configured: `shutdown()` flushes what is buffered and undoes every instrumentation."""

    provider: TracerProvider
    instrumentors: list[Any]

    def shutdown(self) -> None:
        global _tracer
        for instrumentor in reversed(self.instrumentors):
            instrumentor.uninstrument()
        _tracer = None
        self.provider.shutdown()


def configure_tracing(
    service: str,
    environ: Mapping[str, str],
    *,
    quiet_client_roots: bool = True,
    exporter: SpanExporter | None = None,
) -> Tracing | None:
    """Tracing per the OTEL_* variables in `environ`, or None (off, nothing patched).

    `service` is the resource's service.name unless OTEL_SERVICE_NAME (or service.name in
    OTEL_RESOURCE_ATTRIBUTES) names one. `exporter` (tests: the SDK's InMemorySpanExporter) turns
    tracing on whatever `environ` says, exporting each span as it ends. Call it before the servers and
    channels to be traced are made. `quiet_client_roots`: see the module's docstring (False in a
    client, whose calls are the roots of its traces)."""
    global _tracer
    names = [] if exporter is not None else exporters_from(environ)
    if exporter is None and not names:
        return None
    if _tracer is not None:
        raise RuntimeError("tracing is already configured in this process; shut it down first")
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcAioInstrumentorServer, filters

    named_elsewhere = "service.name=" in environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    service_name = environ.get("OTEL_SERVICE_NAME") or (None if named_elsewhere else service)
    attributes = {"service.name": service_name} if service_name else {}
    provider = TracerProvider(
        sampler=_sampler(environ, quiet_client_roots), resource=Resource.create(attributes), shutdown_on_exit=True
    )
    provider.add_span_processor(_QueryNames())  # first: the exporters see the names
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    for name in names:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # reads OTEL_EXPORTER_OTLP_*
        else:
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    untraced = filters.negate(filters.any_of(*(filters.service_prefix(p) for p in _UNTRACED_SERVICES)))
    # asyncpg's spans carry statements, never their parameters: no form's numbers or keys in a trace.
    instrumentors: list[Any] = [
        GrpcAioInstrumentorServer(filter_=untraced),  # type: ignore[no-untyped-call]
        GrpcAioInstrumentorClient(filter_=untraced),  # type: ignore[no-untyped-call]
        AsyncPGInstrumentor(),  # type: ignore[no-untyped-call]
    ]
    for instrumentor in instrumentors:
        instrumentor.instrument(tracer_provider=provider)
    _tracer = provider.get_tracer("suara")
    return Tracing(provider, instrumentors)


# --- suara's own spans ------------------------------------------------------------------------------


def current_span() -> Span | None:
    """The span of the work running now, when tracing is on and it is recorded; else None."""
    if _tracer is None:
        return None
    span = trace.get_current_span()
    return span if span.is_recording() else None


def traceparent(span: Span | None) -> str | None:
    """`span`'s context as a W3C traceparent (what an outbox row keeps), None without a sampled span."""
    if span is None:
        return None
    ctx = span.get_span_context()
    if not ctx.is_valid or not ctx.trace_flags.sampled:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _context_of(value: str) -> SpanContext | None:
    ctx = trace.get_current_span(_PROPAGATOR.extract({"traceparent": value})).get_span_context()
    return ctx if ctx.is_valid else None


@contextlib.contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[Span | None]:
    """A span of suara's own as the current one (None, and no work, when tracing is off)."""
    if _tracer is None:
        yield None
        return
    with _tracer.start_as_current_span(name, attributes=attributes) as current:
        yield current


@contextlib.contextmanager
def batch_span(
    name: str,
    served: Iterable[Span | None] = (),
    traceparents: Iterable[str | None] = (),
    attributes: Mapping[str, Any] | None = None,
    start_time_ns: int | None = None,
) -> Iterator[Span | None]:
    """A span for one piece of work that serves many others: a root of its own, linked to each span it
    serves (`served`: live spans, which get a link back to it; `traceparents`: stored contexts), each
    once. The iterables are not read when tracing is off."""
    if _tracer is None:
        yield None
        return
    live = {s.get_span_context().span_id: s for s in served if s is not None}
    links = {span_id: Link(s.get_span_context()) for span_id, s in live.items()}
    for value in traceparents:
        if value and (ctx := _context_of(value)) is not None:
            links.setdefault(ctx.span_id, Link(ctx))
    with _tracer.start_as_current_span(
        name,
        context=trace.set_span_in_context(trace.INVALID_SPAN),  # a root: it belongs to no one caller's trace
        links=list(links.values()),
        attributes=attributes,
        start_time=start_time_ns,
    ) as current:
        back = current.get_span_context()
        for served_span in live.values():
            if served_span.is_recording():  # a caller that gave up has ended its span
                served_span.add_link(back)
        yield current


def event(span: Span | None, name: str, attributes: Mapping[str, Any]) -> None:
    if span is not None and span.is_recording():
        span.add_event(name, dict(attributes))


def failed(exc: BaseException) -> None:
    """Marks the current span failed with `exc` (work that turns its failure into an answer, not a raise)."""
    current = current_span()
    if current is not None:
        current.record_exception(exc)
        current.set_status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:200])
