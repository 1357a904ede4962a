"""tally's and its relay's Prometheus metrics (docs/metrics.md): counted in memory as forms are answered;
the outbox gauges sampled by one query when Prometheus scrapes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

from prometheus_client import Counter, Gauge, Histogram

from services.tally.queries import QUERIES
from suara.runtime.database import Database
from suara.runtime.errors import (
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
    Unavailable,
)
from suara.runtime.metrics import LATENCY_BUCKETS

REJECTED: Final = "rejected"  # a form refused for what it is (malformed, not signed by a live device key)
STORED: Final = ("accepted", "quarantined", "duplicate", "conflict", "superseded")
REASONS: Final = ("malformed", "unauthenticated", "overloaded", "rate_limited", "unavailable")

FORMS = Counter(
    "suara_tally_forms",
    "forms answered, by contest and outcome (rejected: refused for what the form is; its contest is empty)",
    ["contest", "outcome"],
)
REFUSALS = Counter(
    "suara_tally_refusals",
    "forms (or, refused by address before reading, calls) turned away, by reason",
    ["reason"],
)
IN_FLIGHT = Gauge("suara_tally_in_flight_forms", "forms admitted and not yet answered")
COMMIT_BATCH = Histogram(
    "suara_tally_commit_batch_forms",
    "forms written by one group-commit transaction",
    buckets=tuple(2.0**i for i in range(11)),  # 1 … 1024
)
COMMIT_SECONDS = Histogram(
    "suara_tally_commit_duration_seconds", "time of one group-commit transaction", buckets=LATENCY_BUCKETS
)
GATE_OPEN = Gauge("suara_tally_database_gate_open", "1 while the database gate is open, 0 while it turns calls away")

RELAY_LEADER = Gauge("suara_relay_is_leader", "1 while this process's relay holds the lock and delivers")
OUTBOX_ROWS = Gauge("suara_relay_outbox_rows", "outbox rows not yet delivered to aggregate")
OUTBOX_AGE = Gauge(
    "suara_relay_outbox_oldest_age_seconds", "age of the oldest undelivered outbox row (0 when there is none)"
)
DELIVERED = Counter("suara_relay_delivered_rows", "outbox rows this process's relay delivered")
DEAD_LETTERS = Gauge("suara_relay_dead_letters", "rows set aside in the dead letters and not handed back")

_forms: dict[tuple[str, str], Any] = {}


def _form(contest: str, outcome: str) -> Any:
    child = _forms.get((contest, outcome))
    if child is None:
        child = _forms[(contest, outcome)] = FORMS.labels(contest, outcome)
    return child


def ready(contests: Iterable[str]) -> None:
    """Export every outcome of every contest, and every refusal, from the start (at 0)."""
    for contest in contests:
        for outcome in STORED:
            _form(contest, outcome)
    _form("", REJECTED)
    for reason in REASONS:
        REFUSALS.labels(reason)


def refusal_reason(error: ServiceError) -> str | None:
    """The refusal's reason label; None for an error that is not a refusal (an internal failure)."""
    if isinstance(error, InvalidArgument):
        return "malformed"
    if isinstance(error, Unauthenticated | PermissionDenied):
        return "unauthenticated"
    if isinstance(error, ResourceExhausted):
        return "rate_limited"  # in intake: the device's own rate; in flight is counted where it refuses
    if isinstance(error, Unavailable):
        return "unavailable"
    return None


def refused(reason: str, forms: int = 1) -> None:
    REFUSALS.labels(reason).inc(forms)


def count(prepared: Sequence[Any], outcomes: Sequence[Any]) -> None:
    """One call's forms: each outcome by its contest (`prepared[i]` is the form, or the error it became)."""
    for form, outcome in zip(prepared, outcomes, strict=True):
        if isinstance(outcome, ServiceError):
            reason = refusal_reason(outcome)
            if reason is None:
                continue
            refused(reason)
            if reason in ("malformed", "unauthenticated"):
                _form("", REJECTED).inc()
        else:
            _form(form.contest, outcome.outcome.lower()).inc()


async def sample_outbox(db: Database) -> None:
    """The outbox gauges, from one query (on scrape)."""
    row = await db.fetchrow(QUERIES.relay_metrics)
    OUTBOX_ROWS.set(row["pending"])
    OUTBOX_AGE.set(max(0.0, float(row["oldest_age_s"] or 0.0)))
    DEAD_LETTERS.set(row["dead_letters"])
