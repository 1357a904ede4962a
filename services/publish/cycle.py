"""One publish cycle: what changed in aggregate since the cursor becomes files in the sink.

The order is what makes a killed cycle harmless: every data file first, then the snapshot pointer,
then the history indexes (so they list only published snapshots), and only then the cursor in the
database. A cycle killed anywhere before the cursor moves is redone from the old cursor by the next
one, rewriting the same files.
What changed is read, rendered and written by pipeline.py; this module decides what, and in which order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog

from services.publish import SITE_ASSETS, documents, feed
from services.publish.files import SiteFile
from services.publish.pipeline import TALLY_TIMEOUT_S, Renderer, Writer, every_area, read_views
from services.publish.queries import QUERIES
from services.publish.sinks.base import Sink
from suara.election.chain import SignedHead
from suara.election.codes import DESA_LENGTH, TPS_LENGTH
from suara.election.contest import Contest
from suara.election.signing import chain_key_id_for
from suara.runtime import tracing
from suara.runtime.database import Database
from suara.site import paths
from suara.site.audit import parse_signed_head
from suara.v1 import aggregate_pb2, aggregate_pb2_grpc, tally_pb2, tally_pb2_grpc

log = structlog.get_logger(__name__)

# Changes one cycle takes on (whole sequences, so a little more): behind a backlog, cycles stay short
# and the national numbers fresh, while the TPS files catch up over the next cycles.
CYCLE_CHANGES = 20_000
# Links from one cycle's span to the applies it published, at most (as aggregate bounds them in a reply).
CYCLE_LINKS = 128


@dataclass
class CycleResult:
    snapshot: int
    sequence: int
    full: bool
    files: int = 0
    areas: int = 0
    tps_files: int = 0
    photos: int = 0
    seconds: float = 0.0


@dataclass
class _Work:
    """What one cycle must rewrite, per contest: areas (their totals, status and, when full, region list)
    and TPS files (by code), or everything."""

    areas: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    tps: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    traces: Sequence[aggregate_pb2.ChangeTrace] = ()  # of the applies that made these changes, where traced

    def add(self, contest: str, code: str) -> None:
        if len(code) == TPS_LENGTH:
            self.tps[contest].add(code)
            self.areas[contest].add(code[:DESA_LENGTH])
        else:
            self.areas[contest].add(code)


class Publisher:
    def __init__(
        self,
        pool: Database,
        sink: Sink,
        aggregate: aggregate_pb2_grpc.AggregateServiceAsyncStub,
        tally: tally_pb2_grpc.TallyServiceAsyncStub | None,
        contests: dict[str, Contest],
        *,
        photo_base: str | None = None,
        bulk_interval_s: float = feed.BULK_INTERVAL_S,
    ) -> None:
        """`photo_base`: the public URL of tally's photo bucket, where TPS files link photos (nothing copied);
        None: photos are copied into the sink from tally. `bulk_interval_s`: the bulk downloads are rewritten
        by the first cycle that publishes this long after the last rewrite."""
        self.pool = pool
        self.sink = sink
        self.aggregate = aggregate
        self.tally = tally
        self.contests = contests
        self._renderer = Renderer(tally, photo_base, aggregate)
        # contest → area → recaps in MISMATCH at or below it, as the status files this publisher wrote say
        self._mismatches_written: dict[str, dict[str, int]] = {}
        self._assets_written = False
        self._keys_written: list[tuple[str, bytes]] | None = None
        self._nationals_written: dict[str, bytes] = {}  # contest -> the national totals this publisher wrote last
        self.aggregate_head = 0  # aggregate's newest sequence, as the last Changes call said
        self.bulk_interval_s = bulk_interval_s
        self._bulk_at: float | None = None  # time.monotonic() the last bulk rewrite started
        self._bulk: asyncio.Task[None] | None = None  # the bulk rewrite under way, or the last one
        self._bulk_next: tuple[int, int] | None = None  # (snapshot, unix ms) of a rewrite due while one runs
        self._feed_head: tuple[int, int] | None = None  # (oldest, newest) snapshot the site's feed head says
        # Raises unless this publisher is still the active one; awaited right before the pointer is written.
        self.fence: Callable[[], Awaitable[None]] | None = None

    async def cycle(self, *, full: bool = False) -> CycleResult | None:
        """Publish what changed; None when nothing did. `full` rewrites every file (`suara publish rebuild`)."""
        started = time.perf_counter()
        cursor = await self.pool.fetchrow(QUERIES.cursor)
        registry = await self.pool.fetchrow(QUERIES.registry_load)
        registry_load = None if registry is None else registry["id"]
        asked = full
        full = full or cursor["sequence"] == 0 or cursor["registry_load"] != registry_load
        skeleton_out = cursor["sequence"] == 0 and cursor["snapshot"] and cursor["registry_load"] == registry_load
        # Once this publisher has written the skeleton (a new process, or a lost site, writes it again).
        if skeleton_out and self._assets_written and not asked and await self._no_form_yet():
            return None  # the skeleton is out: nothing to add until the first form
        work, sequence = await self._changes(cursor["sequence"], collect=not full)
        if not full and not work.areas:
            return None
        # Only a cycle that publishes is traced (from its start): an idle one every interval would bury the rest.
        # Aggregate's apply spans carry the sequence they reached, this one the sequences it published, and
        # it links to the applies of the changes it took (a full cycle takes none: its range says what it covers).
        attributes = {
            "suara.snapshot": cursor["snapshot"] + 1,
            "suara.full": full,
            "suara.aggregate.sequence_from": cursor["sequence"],
            "suara.aggregate.sequence_to": sequence,
        }
        began_ns = time.time_ns() - int((time.perf_counter() - started) * 1e9)
        applies = (t.traceparent for t in work.traces[:CYCLE_LINKS])
        with tracing.batch_span("publish.cycle", (), applies, attributes, began_ns) as span:
            result = await self._publish(cursor, registry, registry_load, full, work, sequence, started)
            if span is not None:
                span.set_attribute("suara.files", result.files)
            return result

    async def _publish(
        self, cursor: Any, registry: Any, registry_load: Any, full: bool, work: _Work, sequence: int, started: float
    ) -> CycleResult:
        snapshot = cursor["snapshot"] + 1
        # Before the first form the site is its skeleton only, and the cursor stays at 0, so that the cycle
        # after the first form is a full one (a form arriving meanwhile is published by that one).
        skeleton = full and await self._no_form_yet()
        if skeleton:
            sequence = 0
        no_data_ts = documents.wib(int(registry["loaded_at"].timestamp() * 1000)) if registry else ""
        result = CycleResult(snapshot=snapshot, sequence=sequence, full=full)
        # Overlapping writes with rendering pays in an incremental cycle; in a full rebuild the writer
        # threads and the renderer contend for the GIL, so a rebuild writes in turn (`make bench` has both).
        out = Writer(self.sink, result, overlap=not full)
        try:
            if full or not self._assets_written:
                await out.add(_assets())
            # Asked first, so that the history entries of this snapshot carry the same head as its pointer.
            heads = await self._chain_heads(cursor)
            chain = heads[0] if heads else None
            keys = [(r["key_id"], bytes(r["public_key"])) for r in await self.pool.fetch(QUERIES.chain_keys)]
            if full or keys != self._keys_written:  # before any file that carries a head signed by them
                await out.add([SiteFile(paths.CHAIN_KEYS, documents.dumps(documents.chain_keys(keys)))])
            nationals: dict[str, aggregate_pb2.AreaView] = {}
            changes = feed.FeedCollector(from_zero=full and cursor["sequence"] == 0)
            indexes: list[SiteFile] = []  # the history indexes: written after the pointer (see _history)
            mismatches: dict[str, dict[str, int]] = {}
            for contest in self.contests.values():
                if skeleton:
                    nationals[contest.id] = await self._skeleton(out, contest, no_data_ts)
                    continue
                counts = mismatches[contest.id] = documents.mismatch_counts(await self._mismatched(contest.id))
                self._renderer.recap_mismatches = counts
                if not full:
                    # A recap's change is logged for its area and parent; the counts of the areas above change too.
                    written = self._mismatches_written.get(contest.id, {})
                    for area in written.keys() | counts.keys():
                        if written.get(area, 0) != counts.get(area, 0):
                            work.areas[contest.id].add(area)
                if full:
                    no_data = await self._renderer.no_data(out, contest, no_data_ts)
                    views, changed_tps = every_area(self.aggregate, contest.id), None
                else:
                    no_data = None
                    wanted = sorted(work.areas.get(contest.id, set()), key=lambda a: (len(a), a))
                    views, changed_tps = read_views(self.aggregate, contest.id, wanted), work.tps.get(contest.id, set())
                async for view in views:
                    if view.area.area == "":
                        nationals[contest.id] = view
                    if changed_tps is not None:
                        changes.add(contest, view, changed_tps)
                    else:
                        changes.add_from_zero(contest, view)
                    await self._renderer.area(out, contest, view, changed_tps, no_data_ts, full=full, no_data=no_data)
                if contest.id not in nationals:
                    # Nothing of this contest changed up to `sequence`, but its view is read now, maybe with
                    # later changes; the pointer shows its numbers, so the national files must too.
                    view = nationals[contest.id] = (await self._views(contest.id, [""]))[0]
                    if not full:
                        changes.add(contest, view, set())
                    if documents.dumps(documents.totals(contest, view)) != self._nationals_written.get(contest.id):
                        await self._renderer.area(out, contest, view, set(), no_data_ts, full=False)
                index = await self._history(out, contest, snapshot, nationals[contest.id], chain, heads, full=full)
                if index is not None:
                    indexes.append(index)
            caught_up = skeleton or await self._nothing_after(sequence)
            await out.flush()
        except BaseException:
            await out.abandon()
            raise
        if self.fence is not None:
            # A publisher that lost its lock unnoticed (its database failed over) must not put its pointer
            # over the one the new active publisher wrote: a site going back a snapshot, or two snapshot Ns.
            await self.fence()
        pointer = documents.pointer(
            snapshot=snapshot,
            now_unix_ms=int(time.time() * 1000),
            sequence=sequence,
            chain_head=chain,
            nationals=nationals,
            caught_up=caught_up,
            chain_heads=heads,
        )
        await out.add([SiteFile(paths.POINTER, documents.dumps(pointer))])
        await out.flush()
        await out.add(indexes)
        await out.flush()
        ts = documents.wib(pointer_ms := int(time.time() * 1000))
        pages = [] if skeleton else changes.pages(snapshot, sequence, ts, reset=full)  # a skeleton has no numbers
        async with self.pool.acquire() as conn, conn.transaction():  # the feed's pages are final with the snapshot
            await conn.executemany(QUERIES.save_feed_page, [(snapshot, part, body) for part, body in enumerate(pages)])
            await conn.execute(QUERIES.prune_feed, feed.FEED_KEPT_IN_DATABASE)
            await conn.execute(
                QUERIES.commit_cycle, sequence, snapshot, chain.position if chain else None,
                chain.hash.hex() if chain else None, result.files, full, registry_load,
                chain.key_id if chain else None, chain.signature if chain else None,
                documents.dumps(documents.every_head(heads)["chain_heads"]).decode() if len(heads) > 1 else None,
            )  # fmt: skip
        self._assets_written = True
        self._keys_written = keys
        self._mismatches_written.update(mismatches)
        self._nationals_written = {
            contest: documents.dumps(documents.totals(self.contests[contest], view))
            for contest, view in nationals.items()
        }
        if not skeleton:
            await self._write_feed(snapshot, ts)
            await self._bulk_if_due(snapshot, pointer_ms)
        result.seconds = time.perf_counter() - started
        log.info("published", **{k: v for k, v in vars(result).items() if k != "seconds"},
                 ms=round(result.seconds * 1000, 1))  # fmt: skip
        return result

    async def _mismatched(self, contest: str) -> list[str]:
        """Every recapped area of the contest whose recap is MISMATCH (every TPS counted, and it differs)."""
        areas: list[str] = []
        token = ""
        while True:
            request = aggregate_pb2.ListMismatchesRequest(contest=contest, page_size=1000, page_token=token)
            response = await self.aggregate.ListMismatches(request)
            areas += [item.area for item in response.items]
            token = response.next_page_token
            if not token:
                return areas

    async def _no_form_yet(self) -> bool:
        """Whether no form has reached aggregate yet: no TPS counted or quarantined in any contest."""
        for contest in self.contests:
            area = (await self._views(contest, [""]))[0].area
            if area.tps_reported or area.tps_quarantined:
                return False
        return True

    async def _skeleton(self, out: Writer, contest: Contest, no_data_ts: str) -> aggregate_pb2.AreaView:
        """Before the first form, a contest's skeleton only: its candidates and region lists. No totals, TPS,
        status, NIST or history file exists until there is a number to put in it. The national view, for
        the pointer."""
        await out.add(
            [SiteFile(paths.candidates_path(contest.id), documents.dumps(documents.candidates(contest, no_data_ts)))]
        )
        national = None
        async for view in every_area(self.aggregate, contest.id):
            if view.area.area == "":
                national = view
            region = documents.dumps(documents.region_list(view.children))
            await out.add([SiteFile(paths.region_path(contest.id, view.area.area), region)])
        return national if national is not None else (await self._views(contest.id, [""]))[0]

    async def _write_feed(self, snapshot: int, ts: str) -> None:
        """The committed feed pages the site's feed head does not list yet, then the head: a page is in the
        site only once final, and listed only once in the site. A site without a feed head (a new or a
        lost one) gets this snapshot's pages: its feed starts there."""
        if self._feed_head is None:
            held = await self.sink.read(paths.FEED_HEAD)
            if held is not None:
                head = documents.loads(held)
                self._feed_head = (head["oldest"], head["newest"])
        rows = await self.pool.fetch(QUERIES.feed_pages_after, self._feed_head[1] if self._feed_head else snapshot - 1)
        if not rows:
            return
        await self.sink.write(
            [SiteFile(paths.feed_page_path(r["snapshot"], r["part"]), bytes(r["body"])) for r in rows]
        )
        oldest = self._feed_head[0] if self._feed_head else rows[0]["snapshot"]
        newest = rows[-1]["snapshot"]
        await self.sink.write([SiteFile(paths.FEED_HEAD, documents.dumps(feed.feed_head(oldest, newest, ts)))])
        self._feed_head = (oldest, newest)

    async def _bulk_if_due(self, snapshot: int, now_ms: int) -> None:
        """Starts the bulk downloads' rewrite when the last one started `bulk_interval_s` ago. It runs beside
        the next cycles, which it must not hold up (`bulk_done` awaits it); one due while the last still
        runs follows it at once, reading what is then published."""
        now = time.monotonic()
        if self._bulk_at is not None and now - self._bulk_at < self.bulk_interval_s:
            return
        if self._bulk is not None and not self._bulk.done():
            self._bulk_next = (snapshot, now_ms)
            return
        self._bulk_at = now
        self._bulk = asyncio.create_task(self._bulk_loop((snapshot, now_ms)), name="publish-bulk")

    async def _bulk_loop(self, job: tuple[int, int] | None) -> None:
        while job is not None:
            await self._write_bulk(*job)
            job, self._bulk_next = self._bulk_next, None
            if job is not None:
                self._bulk_at = time.monotonic()

    async def bulk_done(self) -> None:
        """Until the bulk rewrite under way, if any, is over (written, or failed and logged)."""
        if self._bulk is not None:
            await asyncio.shield(self._bulk)

    async def stop_bulk(self) -> None:
        """Cancels the bulk rewrite under way (a publisher stopping): the files already there stay."""
        task, self._bulk = self._bulk, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _write_bulk(self, snapshot: int, now_ms: int) -> None:
        """Every TPS's numbers, one gzipped CSV per contest, then their index: read from aggregate after
        `snapshot` was committed, so at least as new as it. A failure is logged; the next rewrite is due
        after `bulk_interval_s` as usual (the previous files stay, and their index says of when they are)."""
        started = time.perf_counter()
        try:
            listed: dict[str, Any] = {}
            for contest in self.contests.values():  # one contest's file in memory at a time
                body, rows = await feed.bulk_csv(contest, every_area(self.aggregate, contest.id))
                await self.sink.write([feed.bulk_file(contest.id, body)])
                listed[contest.id] = {"path": paths.bulk_path(contest.id), "rows": rows, "bytes": len(body)}
            index = {"snapshot": snapshot, "ts": documents.wib(now_ms), "columns": list(feed.BULK_FIXED_COLUMNS),
                     "files": listed}  # fmt: skip
            await self.sink.write([SiteFile(paths.BULK_INDEX, documents.dumps(index))])
        except Exception as exc:  # the site goes on without a new bulk file; the next one is due as usual
            log.error("bulk_failed", snapshot=snapshot, error=f"{type(exc).__name__}: {exc}")
            return
        log.info("bulk_written", snapshot=snapshot, ms=round((time.perf_counter() - started) * 1000, 1))

    async def _changes(self, since: int, *, collect: bool) -> tuple[_Work, int]:
        """The changes after `since` (about CYCLE_CHANGES at most) and the sequence they reach.

        A full cycle collects none, and reaches the newest sequence: it rewrites everything.
        """
        work = _Work()
        request = aggregate_pb2.ChangesRequest(since=since, limit=CYCLE_CHANGES if collect else 1)
        response = await self.aggregate.Changes(request)
        self.aggregate_head = max(self.aggregate_head, response.sequence)
        if not collect:
            return work, response.sequence
        for change in response.changes:
            work.add(change.contest, change.area)
        work.traces = response.traces
        # A reply holds whole sequences: up to its last one, nothing is left out.
        return work, response.changes[-1].sequence if response.changes else response.sequence

    async def _nothing_after(self, sequence: int) -> bool:
        """Whether aggregate has no change after `sequence`, asked after every area of this cycle was read.

        So when it holds, every change applied before those reads is in this snapshot's files: with the
        numbers matching what was acknowledged, the whole site shows them (the load test waits for it).
        """
        response = await self.aggregate.Changes(aggregate_pb2.ChangesRequest(since=sequence, limit=1))
        self.aggregate_head = max(self.aggregate_head, response.sequence)
        return not response.changes

    async def _views(self, contest: str, areas: Sequence[str]) -> list[aggregate_pb2.AreaView]:
        return [view async for view in read_views(self.aggregate, contest, areas)]

    async def _history(
        self,
        out: Writer,
        contest: Contest,
        snapshot: int,
        national: aggregate_pb2.AreaView,
        chain: SignedHead | None,
        heads: Sequence[SignedHead] = (),
        *,
        full: bool,
    ) -> SiteFile | None:
        """A history entry when the national or a provincial row changed since the previous snapshot's; the
        contest's history index, when it changed, for the caller to write once the pointer is in place.

        The index lists only published snapshots, so an entry a reader finds through it is final: a cycle
        killed before its pointer is redone under the same snapshot, and may write that entry differently.
        Compared with the entry of an *earlier* snapshot: a killed cycle may already have recorded this
        snapshot's, and the cycle that redoes it must still write its file and the index.
        """
        entry = documents.history_entry(contest, snapshot, national, chain, heads)
        async with self.pool.acquire() as conn:
            previous = await conn.fetchval(QUERIES.history_body_before, contest.id, snapshot)
            changed = previous is None or _numbers(documents.loads(previous)) != _numbers(entry)
            dropped = False
            if changed:
                body = documents.dumps(entry)
                await conn.execute(QUERIES.save_history, contest.id, snapshot, entry["ts"], body)
                await out.add([SiteFile(paths.history_path(contest.id, snapshot), body)])
            else:  # not a new state after all: drop what a killed cycle may have recorded for it
                dropped = bool(await conn.fetchval(QUERIES.drop_history, contest.id, snapshot))
            if not (changed or dropped or full):
                return None
            index = [(r["snapshot"], r["ts"]) for r in await conn.fetch(QUERIES.history_index, contest.id)]
            if full:
                for row in await conn.fetch(QUERIES.history_of, contest.id):
                    await out.add([SiteFile(paths.history_path(contest.id, row["snapshot"]), bytes(row["body"]))])
        return SiteFile(paths.history_index_path(contest.id), documents.dumps(documents.history_index(index)))

    async def _chain_heads(self, cursor: Any) -> list[SignedHead]:
        """Tally's signed heads now, one per chain (chain 0's first); while tally is unreachable (or hands
        out a head its key does not sign), the last ones published, so the site keeps going and keeps
        carrying signed heads."""
        if self.tally is not None:
            try:
                reply = await self.tally.GetChainHead(tally_pb2.GetChainHeadRequest(), timeout=TALLY_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                log.warning("chain_head_unavailable", code=exc.code().name, detail=exc.details())
            else:
                key = reply.chain_key
                # chain_head is chain 0's (all a tally from before several chains sends); chain_heads the rest.
                signed = [
                    SignedHead(h.position, bytes.fromhex(h.hash), h.key_id, h.signature, h.chain, h.chains or 1)
                    for h in (reply.chain_head, *reply.chain_heads[1:])
                ]
                if key.key_id == chain_key_id_for(key.public_key) and all(
                    h.key_id == key.key_id and h.signed_by(key.public_key) for h in signed
                ):
                    newest = max(h.position for h in signed)
                    await self.pool.execute(QUERIES.remember_chain_key, key.key_id, key.public_key, newest)
                    return signed
                log.error("chain_head_not_signed", positions=[h.position for h in signed], key_id=key.key_id)
        if cursor["chain_heads"] is not None:
            return [parse_signed_head(h) for h in documents.loads(cursor["chain_heads"])]
        if cursor["chain_signature"] is None:
            return []
        return [
            SignedHead(
                cursor["chain_position"],
                bytes.fromhex(cursor["chain_hash"]),
                cursor["chain_key_id"],
                bytes(cursor["chain_signature"]),
            )
        ]


def _numbers(entry: dict[str, Any]) -> tuple[Any, Any]:
    return entry["nasional"], entry["provinsi"]


def _assets() -> list[SiteFile]:
    return [SiteFile(path.name, path.read_bytes()) for path in sorted(SITE_ASSETS.iterdir()) if path.is_file()]
