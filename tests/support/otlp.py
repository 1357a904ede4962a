"""A collector's OTLP/gRPC trace endpoint for tests: keeps every span it is sent.

A synchronous gRPC server: suara instruments grpc.aio only, so the collector's own calls are never
traced, even in a test process whose tracing is on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2


@dataclass
class Received:
    span: trace_pb2.Span
    service: str  # its resource's service.name


@dataclass
class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    port: int = 0
    received: list[Received] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The variables that send a suara process's spans here."""
        return {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
        }

    def named(self, name: str) -> list[Received]:
        return [r for r in self.received if r.span.name == name]

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for batch in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in batch.resource.attributes}
            for scope in batch.scope_spans:
                self.received += [Received(span, attributes.get("service.name", "")) for span in scope.spans]
        return trace_service_pb2.ExportTraceServiceResponse()


@contextlib.contextmanager
def collector() -> Iterator[Collector]:
    c = Collector()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(c, server)  # type: ignore[no-untyped-call]
    c.port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield c
    finally:
        server.stop(None)
