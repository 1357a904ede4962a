"""Group commit: concurrent submissions share one transaction, so throughput is not one fsync per call.

One task takes whatever is queued (up to a batch), decides every outcome of the
Versions table against what is stored, writes submissions, the current
version, photo rows, the outbox and the chain head in ONE transaction, and only
then answers each caller. Acknowledged therefore means committed. Writers
serialize on the chain-head row lock, which the chain needs anyway; the
unique key (tps, contest, version) is the constraint behind idempotency.

With K chains (docs/domain.md, "The chain") there is one lane per chain: a
form goes to the lane of its TPS's chain, and each lane's transaction locks only
that chain's head, so K lanes (and other replicas) commit side by side. Every
version of a (tps, contest) is in one chain, so deciding its outcome needs no
other chain's lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from opentelemetry.trace import Span

from services.tally import metrics
from services.tally.admission import DatabaseGate
from services.tally.intake import Prepared
from services.tally.queries import QUERIES
from suara.election.chain import ChainRecord, chain_of, link_hash, version_for
from suara.runtime import tracing
from suara.runtime.database import Database, DatabaseUnavailable
from suara.runtime.errors import Internal, ServiceError

log = structlog.stdlib.get_logger("suara.tally.commit")

ACCEPTED, QUARANTINED, DUPLICATE, SUPERSEDED, CONFLICT = (
    "ACCEPTED",
    "QUARANTINED",
    "DUPLICATE",
    "SUPERSEDED",
    "CONFLICT",
)


@dataclass(frozen=True)
class Receipt:
    submission_id: str
    payload_sha256: bytes
    chain_position: int
    chain_hash: bytes
    received_at: datetime
    chain: int = 0


@dataclass(frozen=True)
class Result:
    outcome: str
    receipt: Receipt  # for CONFLICT: the original's
    failed_checks: tuple[str, ...]
    current_version: int


@dataclass
class _Stored:
    receipt: Receipt
    outcome: str
    failed_checks: tuple[str, ...]


@dataclass
class _Item:
    prepared: Prepared
    future: asyncio.Future[Result]
    span: Span | None = None  # the caller's (tracing on): the commit's span links to it, and it to the commit


class GroupCommitter:
    def __init__(self, db: Database, gate: DatabaseGate, batch_max: int, timeout_s: float, chains: int = 1) -> None:
        self._db = db
        self._gate = gate
        self._batch_max = batch_max
        self._timeout_s = timeout_s
        self.chains = chains
        self._chain_version = version_for(chains)
        self._queues: list[asyncio.Queue[_Item]] = [asyncio.Queue() for _ in range(chains)]
        self._tasks: list[asyncio.Task[None]] = []
        self.batches = 0
        self.committed = 0
        self.writing = 0  # forms in the transaction being written now
        self.write_seconds = 0.0

    @property
    def queued(self) -> int:
        return sum(q.qsize() for q in self._queues)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(chain), name=f"tally-group-commit-{chain}") for chain in range(self.chains)
        ]

    async def close(self) -> None:
        log.info(
            "group_commit_stats",
            batches=self.batches,
            forms=self.committed,
            forms_per_batch=round(self.committed / self.batches, 1) if self.batches else 0,
            mean_write_ms=round(1000 * self.write_seconds / self.batches, 2) if self.batches else 0,
        )
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def enqueue(self, prepared: list[Prepared]) -> list[asyncio.Future[Result]]:
        loop = asyncio.get_running_loop()
        futures = []
        span = tracing.current_span()
        for p in prepared:
            fut: asyncio.Future[Result] = loop.create_future()
            self._queues[chain_of(p.tps, self.chains)].put_nowait(_Item(p, fut, span))
            futures.append(fut)
        return futures

    async def _run(self, chain: int) -> None:
        queue = self._queues[chain]
        while True:
            batch = [await queue.get()]
            while len(batch) < self._batch_max and not queue.empty():
                batch.append(queue.get_nowait())
            self.writing += len(batch)
            try:
                # One span serves many calls: a root of its own, linked to each; its context goes into the outbox rows.
                with tracing.batch_span(
                    "tally.commit", (i.span for i in batch), attributes={"suara.forms": len(batch)}
                ) as span:
                    await self._commit(batch, tracing.traceparent(span), chain)
            finally:
                self.writing -= len(batch)

    async def _commit(self, batch: list[_Item], traceparent: str | None = None, chain: int = 0) -> None:
        if not self._gate.available:
            self._fail(batch, self._gate.error())
            return
        started = time.perf_counter()
        try:
            results = await self._write([i.prepared for i in batch], traceparent, chain)
        except DatabaseUnavailable as exc:
            # The commit may or may not have happened; nobody is told "stored", and a resend is safe.
            tracing.failed(exc)
            self._gate.mark_down(exc)
            self._fail(batch, self._gate.error(timed_out=exc.timed_out))
            return
        except Exception as exc:
            tracing.failed(exc)
            log.exception("commit_failed", forms=len(batch))
            self._fail(batch, Internal("storing the form failed; it was not stored. Resend it"))
            return
        seconds = time.perf_counter() - started
        self.batches += 1
        self.committed += len(batch)
        self.write_seconds += seconds
        metrics.COMMIT_BATCH.observe(len(batch))
        metrics.COMMIT_SECONDS.observe(seconds)
        for item, result in zip(batch, results, strict=True):
            if item.span is not None:
                p = item.prepared
                tracing.event(item.span, "suara.form", {
                    "suara.tps": p.tps, "suara.contest": p.contest, "suara.version": p.version,
                    "suara.outcome": result.outcome, "suara.submission_id": result.receipt.submission_id,
                })  # fmt: skip
            if not item.future.done():
                item.future.set_result(result)

    @staticmethod
    def _fail(batch: list[_Item], error: ServiceError) -> None:
        for item in batch:
            if not item.future.done():
                item.future.set_exception(error)

    async def _write(self, batch: list[Prepared], traceparent: str | None = None, chain: int = 0) -> list[Result]:
        """Store one batch, every form of which is in `chain`."""
        async with self._db.acquire(wait_s=1.0, within_s=self._timeout_s) as conn, conn.transaction():
            head = await conn.fetchrow(QUERIES.lock_chain_head, chain)
            position: int = head["position"]
            previous: bytes = bytes(head["hash"])
            keys = list({p.key for p in batch})
            rows = await conn.fetch(
                QUERIES.existing_for_keys, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]
            )
            stored: dict[tuple[str, str, int], _Stored] = {}
            current: dict[tuple[str, str], int] = {}
            for row in rows:
                current[(row["tps"], row["contest"])] = row["current_version"] or 0
                if row["id"] is not None:
                    stored[(row["tps"], row["contest"], row["version"])] = _Stored(
                        Receipt(
                            str(row["id"]),
                            bytes(row["payload_sha256"]),
                            row["chain_position"],
                            bytes(row["chain_hash"]),
                            row["received_at"],
                            row["chain"],
                        ),
                        row["outcome"],
                        tuple(row["failed_checks"]),
                    )

            now = datetime.now(UTC)
            results: list[Result] = []
            submissions: list[tuple[object, ...]] = []
            new_current: dict[tuple[str, str], tuple[int, uuid.UUID]] = {}
            photos: dict[str, tuple[str, int]] = {}  # bytes: in the photo store already
            alarms: list[tuple[str, str, str, int, str]] = []
            for p in batch:
                slot = (p.tps, p.contest)
                existing = stored.get(p.key)
                if existing is not None:
                    if existing.receipt.payload_sha256 == p.payload_sha256:
                        results.append(Result(DUPLICATE, existing.receipt, existing.failed_checks, current[slot]))
                    else:
                        results.append(Result(CONFLICT, existing.receipt, (), current[slot]))
                        alarms.append(self._conflict_alarm(p, existing))
                    continue
                if p.version > current.get(slot, 0):
                    outcome = QUARANTINED if p.failed_checks else ACCEPTED
                    current[slot] = p.version
                else:
                    outcome = SUPERSEDED
                position += 1
                submission_id = uuid.uuid4()
                record = ChainRecord(
                    position, str(submission_id), p.tps, p.contest, p.version, p.device_id, p.payload_sha256,
                    p.signature, outcome, p.failed_checks, p.photo_sha256, now, chain, self.chains,
                )  # fmt: skip
                previous = link_hash(previous, record, self._chain_version)
                receipt = Receipt(str(submission_id), p.payload_sha256, position, previous, now, chain)
                stored[p.key] = _Stored(receipt, outcome, tuple(p.failed_checks))
                submissions.append(
                    (
                        submission_id, p.tps, p.contest, p.version, p.payload, p.payload_sha256, p.signature,
                        p.device_id, outcome, ",".join(p.failed_checks), ",".join(p.photo_sha256), position,
                        previous, json.dumps(p.counts),
                    )
                )  # fmt: skip
                if outcome != SUPERSEDED:
                    new_current[slot] = (p.version, submission_id)
                for photo in p.photos:
                    photos[photo.sha256] = (photo.content_type, len(photo.content))
                results.append(Result(outcome, receipt, tuple(p.failed_checks), current[slot]))

            if submissions:
                columns = list(zip(*submissions, strict=True))
                await conn.execute(
                    QUERIES.write_batch,
                    *columns,
                    now,
                    [slot[0] for slot in new_current],
                    [slot[1] for slot in new_current],
                    [v[0] for v in new_current.values()],
                    [v[1] for v in new_current.values()],
                    position,
                    previous,
                    self._chain_version,
                    traceparent,
                    chain,
                )
            if photos:
                await conn.execute(
                    QUERIES.insert_photos,
                    list(photos),
                    [v[0] for v in photos.values()],
                    [v[1] for v in photos.values()],
                )
            if alarms:
                await conn.execute(QUERIES.insert_alarms, *map(list, zip(*alarms, strict=True)))
        return results

    @staticmethod
    def _conflict_alarm(p: Prepared, existing: _Stored) -> tuple[str, str, str, int, str]:
        log.warning(
            "conflict_alarm",
            tps=p.tps,
            contest=p.contest,
            version=p.version,
            stored_sha256=existing.receipt.payload_sha256.hex(),
            refused_sha256=p.payload_sha256.hex(),
            device_id=p.device_id,
        )
        detail = {
            "stored_submission": existing.receipt.submission_id,
            "stored_sha256": existing.receipt.payload_sha256.hex(),
            "refused_sha256": p.payload_sha256.hex(),
            "device_id": p.device_id,
        }
        return ("CONFLICT", p.tps, p.contest, p.version, json.dumps(detail))
