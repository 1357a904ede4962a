"""aggregate's Prometheus metrics (docs/metrics.md), counted as batches are applied."""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

from suara.runtime.metrics import LATENCY_BUCKETS
from suara.v1 import aggregate_pb2

UPDATES = Counter("suara_aggregate_updates", "updates answered, by outcome", ["outcome"])
APPLY_SECONDS = Histogram(
    "suara_aggregate_apply_duration_seconds", "time to check and apply one batch of updates", buckets=LATENCY_BUCKETS
)
HEAD = Gauge("suara_aggregate_head_sequence", "the newest change sequence")

# UPDATE_OUTCOME_APPLIED → applied: the label is the name without its prefix, in lower case.
_PREFIX = "UPDATE_OUTCOME_"
_CHILDREN = {
    value.number: UPDATES.labels(value.name.removeprefix(_PREFIX).lower())
    for value in aggregate_pb2.UpdateOutcome.DESCRIPTOR.values
    if value.number != aggregate_pb2.UPDATE_OUTCOME_UNSPECIFIED
}


def applied(outcomes: Iterable[int], sequence: int, started: float) -> None:
    """One batch answered: its outcomes, its time since `started` (perf_counter) and the head it left."""
    APPLY_SECONDS.observe(time.perf_counter() - started)
    for outcome in outcomes:
        child = _CHILDREN.get(outcome)
        if child is not None:
            child.inc()
    HEAD.set(sequence)
