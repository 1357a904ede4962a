"""Federation: one instance's subtree totals fed continuously to another (a province's to the nation's).

The forwarder reads its own instance's rows of the areas it forwards (GetAreas, one snapshot per
contest) and sends each row that changed since it last sent it as an AreaUpdate (ApplyAreaUpdates),
versioned by the row's own change sequence. A resend — after a lost reply, a restart, or an outage
of either instance — is DUPLICATE or STALE at the receiver and changes nothing, so the forwarder
keeps no state on disk: after a restart it sends every row once more, and the receiver keeps what
it already has. Rows are read whole, never summed here: what arrives is what the sender published.

Faults: either instance unreachable, or a credential refused (while it is renewed, say): back off
with jitter and try the same round again. INVALID_ARGUMENT (an area or contest an instance does not
know) ends the run: it is the forwarder's configuration that is wrong. An update the receiver
refuses (its registry disagrees, say) is logged as an error, `forward_refused`, and not sent again
until its row changes: the same numbers could only be refused again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import grpc
import structlog

from suara.runtime.backoff import Backoff
from suara.runtime.wire import AGGREGATE_MAX_BATCH
from suara.v1 import aggregate_pb2, aggregate_pb2_grpc

log = structlog.get_logger("suara.aggregate.forward")

INTERVAL_S: Final = 0.5  # between rounds when nothing changed: a province row changes at most this much later
MAX_AREAS_PER_READ: Final = 2000  # GetAreas' bound
OUTCOMES: Final = {
    aggregate_pb2.UPDATE_OUTCOME_APPLIED: "applied",
    aggregate_pb2.UPDATE_OUTCOME_DUPLICATE: "duplicate",
    aggregate_pb2.UPDATE_OUTCOME_STALE: "stale",
    aggregate_pb2.UPDATE_OUTCOME_REFUSED: "refused",
}


@dataclass
class ForwardStats:
    rounds: int = 0
    sent: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES.values(), 0))
    failures: int = 0


class Forwarder:
    """Feeds `areas` of every contest in `contests` from `source` (reader) to `target` (federation)."""

    def __init__(
        self,
        source: aggregate_pb2_grpc.AggregateServiceAsyncStub,
        target: aggregate_pb2_grpc.AggregateServiceAsyncStub,
        *,
        name: str,
        areas: Sequence[str],
        contests: Sequence[str],
        interval_s: float = INTERVAL_S,
        backoff: Backoff | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        if not name:
            raise ValueError("a forwarder needs a name: the receiver keeps each sender's rows by it")
        self.source, self.target = source, target
        self.name = name
        self.areas = sorted(set(areas))
        self.contests = list(contests)
        self.interval_s = interval_s
        self.backoff = backoff or Backoff(0.2, 5.0)
        self.timeout_s = timeout_s
        self.sent: dict[tuple[str, str], int] = {}  # (contest, area) -> the version last answered for
        self.stats = ForwardStats()

    async def step(self) -> int:
        """One round: read every forwarded row, send those that changed. The updates sent."""
        updates: list[aggregate_pb2.AreaUpdate] = []
        for contest in self.contests:
            for i in range(0, len(self.areas), MAX_AREAS_PER_READ):
                request = aggregate_pb2.GetAreasRequest(contest=contest, areas=self.areas[i : i + MAX_AREAS_PER_READ])
                reply = await self.source.GetAreas(request, timeout=self.timeout_s)
                updates += [u for v in reply.views if (u := self._changed(contest, v.area)) is not None]
        for i in range(0, len(updates), AGGREGATE_MAX_BATCH):
            await self._send(updates[i : i + AGGREGATE_MAX_BATCH])
        self.stats.rounds += 1
        return len(updates)

    def _changed(self, contest: str, row: aggregate_pb2.AreaRow) -> aggregate_pb2.AreaUpdate | None:
        version = row.changed_sequence
        if version < 1 or self.sent.get((contest, row.area)) == version:
            return None  # never touched (nothing to say yet), or already answered for
        return aggregate_pb2.AreaUpdate(
            area=row.area,
            contest=contest,
            version=version,
            totals=row.totals,
            tps_total=row.tps_total,
            tps_reported=row.tps_reported,
            tps_quarantined=row.tps_quarantined,
        )

    async def _send(self, updates: list[aggregate_pb2.AreaUpdate]) -> None:
        request = aggregate_pb2.ApplyAreaUpdatesRequest(source=self.name, updates=updates)
        reply = await self.target.ApplyAreaUpdates(request, timeout=self.timeout_s)
        if len(reply.outcomes) != len(updates):
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.INTERNAL,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                f"{len(reply.outcomes)} outcomes for {len(updates)} updates",
            )
        reasons = {r.index: r.reason for r in reply.refusals}
        self.stats.sent += len(updates)
        for i, (update, outcome) in enumerate(zip(updates, reply.outcomes, strict=True)):
            name = OUTCOMES.get(outcome, "unspecified")
            self.stats.outcomes[name] = self.stats.outcomes.get(name, 0) + 1
            self.sent[(update.contest, update.area)] = update.version  # answered: refused ones too
            if outcome == aggregate_pb2.UPDATE_OUTCOME_REFUSED:
                log.error(
                    "forward_refused",
                    area=update.area,
                    contest=update.contest,
                    version=update.version,
                    reason=reasons.get(i, ""),
                )

    async def run(self, stop: asyncio.Event) -> None:
        """Rounds until `stop` is set: at once after a round that sent something, else every interval."""
        log.info("forward_started", name=self.name, areas=self.areas, contests=self.contests)
        while not stop.is_set():
            try:
                sent = await self.step()
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise  # an area or contest the instances do not know: asking again cannot help
                self.stats.failures += 1
                delay = self.backoff.next_delay()
                log.warning("forward_failed", code=exc.code().name, error=exc.details(), retry_in_s=round(delay, 2))
            else:
                self.backoff.reset()
                delay = 0.0 if sent else self.interval_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        log.info("forward_stopped", name=self.name, sent=self.stats.sent, outcomes=self.stats.outcomes)
