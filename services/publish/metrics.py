"""publish's Prometheus metrics (docs/metrics.md): cycles counted as they run; the lag, the snapshot's
age and leadership read when Prometheus scrapes."""

from __future__ import annotations

import time
from collections import deque
from typing import Final

from prometheus_client import Counter, Gauge, Histogram

LEADER = Gauge("suara_publish_is_leader", "1 while this publisher is the active one, 0 on standby")
LAG_SEQUENCES = Gauge("suara_publish_lag_sequences", "aggregate's newest change sequence minus the published one")
LAG_SECONDS = Gauge(
    "suara_publish_lag_seconds", "age of the oldest change aggregate has and the site does not show (0 when none)"
)
CYCLE_SECONDS = Histogram(
    "suara_publish_cycle_duration_seconds",
    "time of one cycle that published a snapshot",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0),
)
FILES_WRITTEN = Counter("suara_publish_files_written", "files written to the site by this publisher")
SNAPSHOT_AGE = Gauge("suara_publish_snapshot_age_seconds", "now minus the time of the published snapshot")
LAST_SUCCESS = Gauge(
    "suara_publish_last_success_timestamp_seconds",
    "unix time of this publisher's last successful turn: a cycle (active), a look at the lock (standby)",
)

MAX_SEEN: Final = 10_000  # heads remembered while publish is behind: the oldest one is what the age needs


class Lag:
    """How far the site trails aggregate, from the heads publish saw and when it first saw each.

    Changes carry no time, so the age of the oldest unpublished change is taken from the first time publish
    saw a head beyond the published sequence: late by at most the time between two looks (a cycle's
    interval, or a scrape's)."""

    def __init__(self) -> None:
        self.head = 0
        self._seen: deque[tuple[int, float]] = deque()  # (head, first seen), heads increasing

    def saw(self, head: int, now: float | None = None) -> None:
        if head > self.head:
            self.head = head
            if len(self._seen) < MAX_SEEN:
                self._seen.append((head, time.time() if now is None else now))

    def behind(self, published: int, now: float | None = None) -> tuple[int, float]:
        """(sequences, seconds) the site at `published` trails the newest head seen."""
        while self._seen and self._seen[0][0] <= published:
            self._seen.popleft()
        if not self._seen or self.head <= published:
            return 0, 0.0
        now = time.time() if now is None else now
        return self.head - published, max(0.0, now - self._seen[0][1])
