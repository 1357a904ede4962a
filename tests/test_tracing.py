"""Traces (suara/runtime/tracing.py): a form's trace runs from tally's Submit through the group commit,
the relay's ApplyUpdates and aggregate's apply to the publish cycle that made it visible; log lines
carry the trace they were written in; and with no exporter configured nothing is traced.

The spans come from the real services, in process, through OpenTelemetry's own SDK into its
InMemorySpanExporter: what a collector would receive, read back."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.aggregate.views import CHANGES_TRACES_LIMIT
from services.tally.queries import QUERIES as TALLY_QUERIES
from suara.runtime import tracing
from suara.runtime.logging import configure_logging
from suara.runtime.settings import SettingError
from suara.runtime.tracing import Tracing, configure_tracing, exporters_from
from suara.v1 import aggregate_pb2, tally_pb2
from tests.cli.files import key_path, write_form
from tests.support.aggregate import apply, start_aggregate, update
from tests.support.factories import consistent_form, signed
from tests.support.oracles.aggregate import Oracle, Registry
from tests.support.otlp import collector
from tests.support.processes import run_suara, suara_env
from tests.support.publish import Pipeline
from tests.support.tally import Tally

SUBMIT = "/suara.v1.TallyService/Submit"
APPLY = "/suara.v1.AggregateService/ApplyUpdates"


@dataclass
class Traced:
    tracing: Tracing
    exporter: InMemorySpanExporter

    def spans(self) -> Sequence[ReadableSpan]:
        return self.exporter.get_finished_spans()


@pytest.fixture
def traced() -> Iterator[Traced]:
    """Tracing on as in a service process (quiet client roots), into memory. Asked for before the
    services' fixture, so their servers and channels are made instrumented."""
    exporter = InMemorySpanExporter()
    configured = configure_tracing("suara-test", {}, exporter=exporter)
    assert configured is not None
    try:
        yield Traced(configured, exporter)
    finally:
        configured.shutdown()


@pytest.fixture
def json_logs() -> Iterator[list[dict[str, object]]]:
    """Every log line written meanwhile, as the JSON a process writes."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging("info", "json", service="tracing-test")
    formatter = root.handlers[0]
    lines: list[dict[str, object]] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(formatter.format(record)))

    root.addHandler(Capture())
    try:
        yield lines
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def _one(spans: Sequence[ReadableSpan], name: str, kind: SpanKind | None = None) -> ReadableSpan:
    found = [s for s in spans if s.name == name and (kind is None or s.kind == kind)]
    assert len(found) == 1, f"{len(found)} spans {name!r} ({kind}) among {sorted({s.name for s in spans})}"
    return found[0]


def _ctx(span: ReadableSpan) -> SpanContext:
    context: SpanContext | None = span.context
    assert context is not None
    return context


def _int(span: ReadableSpan, attribute: str) -> int:
    value = (span.attributes or {}).get(attribute)
    assert isinstance(value, int), (attribute, value)
    return value


def _child_of(child: ReadableSpan, parent: ReadableSpan) -> bool:
    return (
        child.parent is not None
        and child.parent.span_id == _ctx(parent).span_id
        and (_ctx(child).trace_id == _ctx(parent).trace_id)
    )


def _linked(span: ReadableSpan, to: ReadableSpan) -> bool:
    return any(link.context.span_id == _ctx(to).span_id for link in span.links)


def _traceparent(span: ReadableSpan) -> str:
    """A span's context as W3C Trace Context writes it."""
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, set_span_in_context(NonRecordingSpan(_ctx(span))))
    return carrier["traceparent"]


def _console_spans(output: str) -> list[dict[str, Any]]:
    """The spans the console exporter printed (indented JSON objects, one after another) among other output."""
    decoder = json.JSONDecoder()
    return [decoder.raw_decode(output, m.start())[0] for m in re.finditer(r"^\{$", output, re.MULTILINE)]


def _events(span: ReadableSpan, name: str) -> list[Mapping[str, object]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == name]


async def test_a_forms_trace_runs_from_submit_to_the_publish_cycle(traced: Traced, pipeline: Pipeline) -> None:
    # A first form and the first, full cycle (before any form it would be the skeleton, and the first form's
    # cycle a full one): the traced form goes out in an incremental one.
    assert await pipeline.submit(pipeline.all_tps[0]) is not None
    await pipeline.delivered()
    first = await pipeline.cycle()
    assert first is not None and first.full
    traced.exporter.clear()
    tps = pipeline.all_tps[3]
    device = traced.tracing.provider.get_tracer("test-device")
    with device.start_as_current_span("device.submit"):  # a device with tracing on: its call is traced
        response = await pipeline.submit(tps)
    assert response is not None and response.outcome == tally_pb2.OUTCOME_ACCEPTED
    result = await pipeline.cycle()
    assert result is not None
    spans = traced.spans()

    # The device's client span, and tally's server span its child across the wire.
    root = _one(spans, "device.submit")
    client = _one(spans, SUBMIT, SpanKind.CLIENT)
    submit = _one(spans, SUBMIT, SpanKind.SERVER)
    assert _child_of(client, root) and _child_of(submit, client)
    assert _events(submit, "suara.form") == [
        {
            "suara.tps": tps,
            "suara.contest": "ppwp",
            "suara.version": 1,
            "suara.outcome": "ACCEPTED",
            "suara.submission_id": response.receipt.submission_id,
        }
    ]

    # The group commit serves many calls: a root of its own, linked both ways with the Submit it answered.
    commit = _one(spans, "tally.commit")
    assert commit.parent is None and _ctx(commit).trace_id != _ctx(submit).trace_id
    assert _linked(commit, submit) and _linked(submit, commit)
    assert commit.attributes is not None and commit.attributes["suara.forms"] == 1
    queries = [s for s in spans if _child_of(s, commit)]
    assert all(s.kind == SpanKind.CLIENT and s.attributes and "db.system" in s.attributes for s in queries)
    assert "tally.write_batch" in {s.name for s in queries}  # asyncpg's spans, named after suara's queries

    # The relay's delivery links to that commit (its context kept in the outbox row), and its ApplyUpdates
    # call is one trace from the relay's client span through aggregate's server span to its apply span.
    delivers = [s for s in spans if s.name == "tally.relay.deliver" and _linked(s, commit)]
    assert len(delivers) == 1
    deliver = delivers[0]
    relay_call = _one(spans, APPLY, SpanKind.CLIENT)
    applied = _one(spans, APPLY, SpanKind.SERVER)
    apply = _one(spans, "aggregate.apply")
    assert _child_of(relay_call, deliver) and _child_of(applied, relay_call) and _child_of(apply, applied)
    stored = await pipeline.db.fetchval("SELECT traceparent FROM tally.outbox WHERE tps = $1", tps)
    assert stored == _traceparent(commit)

    # The cycle that published it covers the sequence aggregate's apply reached, and links to that apply
    # (whose context aggregate kept with the sequence): from the form, the way leads to the cycle.
    sequence = _int(apply, "suara.aggregate.sequence")
    kept = await pipeline.db.fetch(
        "SELECT sequence, traceparent FROM aggregate.change_trace WHERE sequence > $1", first.sequence
    )
    assert [tuple(r) for r in kept] == [(sequence, _traceparent(apply))]
    cycle = _one(spans, "publish.cycle")
    assert _int(cycle, "suara.aggregate.sequence_from") < sequence <= _int(cycle, "suara.aggregate.sequence_to")
    assert [(link.context.trace_id, link.context.span_id) for link in cycle.links] == [
        (_ctx(apply).trace_id, _ctx(apply).span_id)
    ]
    assert cycle.parent is None and _ctx(cycle).trace_id != _ctx(apply).trace_id
    assert cycle.attributes is not None
    assert cycle.attributes["suara.snapshot"] == result.snapshot == 2
    assert cycle.attributes["suara.files"] == result.files
    await pipeline.check_site()  # and what it published is the form

    # Idle, nothing is traced: publish's look for changes and the relay's polls are roots of kind CLIENT,
    # and health checks are not traced at all.
    traced.exporter.clear()
    assert await pipeline.cycle() is None
    with suppress_instrumentation():  # as from a prober that does not trace: no trace context sent
        health = await health_pb2_grpc.HealthStub(pipeline.tally.channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert traced.spans() == ()


async def test_changes_hand_out_the_apply_contexts_of_their_sequences_at_most_128(
    traced: Traced, db_url: str, db: asyncpg.Connection
) -> None:
    """More traced applies than a reply carries contexts: the first 128 of the reply's sequences come back."""
    aggregate = await start_aggregate(db_url, db)
    try:
        registry = await Registry.read(db)
        since = (await aggregate.stub.Changes(aggregate_pb2.ChangesRequest(since=0, limit=1))).sequence
        relay = traced.tracing.provider.get_tracer("test-relay")
        oracle = Oracle(registry)
        for i in range(CHANGES_TRACES_LIMIT + 5):  # each a sequence of its own, applied in a trace
            with relay.start_as_current_span("relay.deliver"):
                await apply(aggregate, oracle, [update(registry, registry.tps[i % 3], version=i // 3 + 1)])
        spans = [s for s in traced.spans() if s.name == "aggregate.apply"]
        applies = sorted((_int(s, "suara.aggregate.sequence"), _traceparent(s)) for s in spans)
        assert len(applies) == CHANGES_TRACES_LIMIT + 5 and applies[0][0] == since + 1

        reply = await aggregate.stub.Changes(aggregate_pb2.ChangesRequest(since=since))
        assert {c.sequence for c in reply.changes} == {seq for seq, _ in applies}
        assert [(t.sequence, t.traceparent) for t in reply.traces] == applies[:CHANGES_TRACES_LIMIT]
        # A shorter reply: only its own sequences' contexts.
        page = await aggregate.stub.Changes(aggregate_pb2.ChangesRequest(since=since + 3, limit=20))
        taken = {c.sequence for c in page.changes}
        assert 0 < len(taken) < 10
        assert [(t.sequence, t.traceparent) for t in page.traces] == [a for a in applies if a[0] in taken]
    finally:
        await aggregate.close()


async def test_with_tracing_off_aggregate_keeps_no_context(pipeline: Pipeline) -> None:
    assert not tracing.enabled()
    response = await pipeline.submit(pipeline.all_tps[7])
    assert response is not None and response.outcome == tally_pb2.OUTCOME_ACCEPTED
    await pipeline.delivered()
    changes = await pipeline.publisher.aggregate.Changes(aggregate_pb2.ChangesRequest(since=0))
    assert pipeline.all_tps[7] in {c.area for c in changes.changes}  # applied
    assert await pipeline.db.fetchval("SELECT count(*) FROM aggregate.change_trace") == 0
    assert not changes.traces


async def test_one_commit_of_a_batch_links_its_call_once_and_so_does_its_delivery(
    traced: Traced, pipeline: Pipeline
) -> None:
    stations = pipeline.all_tps[10:13]
    requests = [
        signed(await pipeline.key(tps), consistent_form(tps, "ppwp", pipeline.choices["ppwp"], 1)) for tps in stations
    ]
    device = traced.tracing.provider.get_tracer("test-device")
    with device.start_as_current_span("device.submit"):
        reply = await pipeline.tally.stub.SubmitBatch(tally_pb2.SubmitBatchRequest(items=requests))
    assert [r.outcome for r in reply.results] == [tally_pb2.OUTCOME_ACCEPTED] * 3
    await pipeline.delivered()
    spans = traced.spans()
    call = _one(spans, "/suara.v1.TallyService/SubmitBatch", SpanKind.SERVER)
    forms = _events(call, "suara.form")
    assert sorted(f["suara.tps"] for f in forms) == sorted(stations)  # type: ignore[type-var]
    assert {f["suara.submission_id"] for f in forms} == {r.receipt.submission_id for r in reply.results}
    commit = _one(spans, "tally.commit")  # the three forms went in one commit
    assert [link.context.span_id for link in commit.links] == [_ctx(call).span_id]
    assert [link.context.span_id for link in call.links] == [_ctx(commit).span_id]
    deliver = _one(spans, "tally.relay.deliver")
    assert _int(deliver, "suara.rows") == 3
    assert [link.context.span_id for link in deliver.links] == [_ctx(commit).span_id]


async def test_a_log_line_carries_the_trace_it_was_written_in(
    traced: Traced, pipeline: Pipeline, json_logs: list[dict[str, object]]
) -> None:
    tps = pipeline.all_tps[5]
    assert await pipeline.submit(tps, seed=1) is not None
    json_logs.clear()
    traced.exporter.clear()
    # The same version with other numbers: refused in the commit (conflict_alarm) and by the call (rpc_error).
    key = await pipeline.key(tps)
    form = consistent_form(tps, "ppwp", pipeline.choices["ppwp"], 1, seed=2)
    device = traced.tracing.provider.get_tracer("test-device")
    with device.start_as_current_span("device.submit"), pytest.raises(grpc.aio.AioRpcError) as refused:
        await pipeline.tally.stub.Submit(signed(key, form))
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    spans = traced.spans()
    submit = _one(spans, SUBMIT, SpanKind.SERVER)
    commit = _one(spans, "tally.commit")

    def ids(span: ReadableSpan) -> tuple[str, str]:
        return f"{_ctx(span).trace_id:032x}", f"{_ctx(span).span_id:016x}"

    rpc_errors = [line for line in json_logs if line.get("event") == "rpc_error"]
    alarms = [line for line in json_logs if line.get("event") == "conflict_alarm"]
    assert len(rpc_errors) == 1 and len(alarms) == 1, json_logs
    assert (rpc_errors[0].get("trace_id"), rpc_errors[0].get("span_id")) == ids(submit)
    assert (alarms[0].get("trace_id"), alarms[0].get("span_id")) == ids(commit)


async def test_suara_submit_with_tracing_on_is_the_root_of_the_forms_trace(
    traced: Traced, tally: Tally, db_url: str, tmp_path: Path
) -> None:
    """The real command in a subprocess, exporting to its stdout: tally's Submit span continues its trace."""
    station = await tally.station()
    station.key.save(key_path(tmp_path))
    form = write_form(tally, station.tps, tmp_path / "form.json")
    env = suara_env(DATABASE_URL=db_url, SUARA_DATA_DIR=tmp_path / "state", OTEL_TRACES_EXPORTER="console")
    args = ("submit", str(form), "--key", str(key_path(tmp_path)), "--target", f"127.0.0.1:{tally.app.port}")
    done = await run_suara(*args, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    submit = _one(traced.spans(), SUBMIT, SpanKind.SERVER)
    assert submit.parent is not None and submit.parent.is_remote
    # The command's client span, printed by its console exporter as it exited: the parent, same trace.
    (client,) = [s for s in _console_spans(done.stdout) if s["name"] == SUBMIT]
    assert client["kind"] == "SpanKind.CLIENT"
    assert client["context"]["trace_id"] == f"0x{_ctx(submit).trace_id:032x}"
    assert client["context"]["span_id"] == f"0x{submit.parent.span_id:016x}"
    assert client["resource"]["attributes"]["service.name"] == "suara-submit"


async def test_without_an_exporter_nothing_is_traced(tally: Tally, json_logs: list[dict[str, object]]) -> None:
    for environ in (
        {},
        {"OTEL_SERVICE_NAME": "suara", "OTEL_TRACES_SAMPLER": "always_on"},  # settings, but no exporter
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"},
    ):
        assert configure_tracing("suara-test", environ) is None, environ
    assert not tracing.enabled()
    # Nothing patched: gRPC's and asyncpg's own functions.
    assert grpc.aio.server.__module__ == "grpc.aio._server"
    assert grpc.aio.secure_channel.__module__ == "grpc.aio._channel"
    assert not hasattr(asyncpg.connection.Connection.fetch, "__wrapped__")
    # A call's log line has no trace: there is no span.
    with pytest.raises(grpc.aio.AioRpcError):
        await tally.stub.Submit(tally_pb2.SubmitRequest())
    errors = [line for line in json_logs if line.get("event") == "rpc_error"]
    assert len(errors) == 1 and errors[0]["method"] == SUBMIT
    assert "trace_id" not in errors[0] and "span_id" not in errors[0]


async def test_otlp_over_grpc_carries_the_spans_to_a_collector(
    db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exporter as pinned, with grpcio and protobuf as pinned, into OTLP's own service definition."""
    with collector() as received:
        environ = {**received.env(), "OTEL_SERVICE_NAME": "suara-tally"}
        for name, value in environ.items():
            monkeypatch.setenv(name, value)  # the exporter reads its own variables from the process's environment
        configured = configure_tracing("suara-test", environ)
        assert configured is not None
        try:
            with tracing.span("test.work", {"suara.rows": 1}):
                assert await db.fetchval(TALLY_QUERIES.relay_undelivered) == 0
        finally:
            configured.shutdown()  # flushes the batch to the collector
    (work,) = received.named("test.work")
    (query,) = received.named("tally.relay_undelivered")  # asyncpg's span, named after the query
    assert query.span.parent_span_id == work.span.span_id and query.span.trace_id == work.span.trace_id
    assert work.service == "suara-tally"


def test_the_otel_variables_choose_the_exporter() -> None:
    assert exporters_from({}) == []
    assert exporters_from({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}) == ["otlp"]
    assert exporters_from({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317"}) == ["otlp"]
    assert exporters_from({"OTEL_TRACES_EXPORTER": "otlp,console"}) == ["otlp", "console"]
    assert exporters_from({"OTEL_TRACES_EXPORTER": "none"}) == []
    with pytest.raises(SettingError, match="OTEL_TRACES_EXPORTER"):
        exporters_from({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(SettingError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        exporters_from({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    with pytest.raises(SettingError, match="OTEL_TRACES_SAMPLER_ARG"):
        configure_tracing("suara-test", {"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "traceidratio",
                                         "OTEL_TRACES_SAMPLER_ARG": "2"})  # fmt: skip
    assert not tracing.enabled()


def test_an_exporter_turns_instrumentation_on_and_shutdown_off() -> None:
    configured = configure_tracing("suara-test", {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "tally-a"})
    assert configured is not None
    try:
        assert tracing.enabled()
        assert grpc.aio.server.__module__ != "grpc.aio._server"
        assert hasattr(asyncpg.connection.Connection.fetch, "__wrapped__")
        assert configured.provider.resource.attributes["service.name"] == "tally-a"
    finally:
        configured.shutdown()
    assert not tracing.enabled()
    assert grpc.aio.server.__module__ == "grpc.aio._server"
    assert not hasattr(asyncpg.connection.Connection.fetch, "__wrapped__")
