"""One publish cycle: what changed in aggregate since the cursor becomes files in the sink.

The order is what makes a killed cycle harmless: every data file first, then the history index,
then the snapshot pointer, and only then the cursor in the database. A cycle killed anywhere
before the cursor moves is redone from the old cursor by the next one, rewriting the same files.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import asyncpg
import grpc
import structlog

from services.publish import SITE_ASSETS, documents
from services.publish.files import SiteFile
from services.publish.nist import AreaResult, nist_json, nist_report
from services.publish.queries import QUERIES
from services.publish.sink import Sink
from suara.election.contest import Contest
from suara.v1 import aggregate_pb2, aggregate_pb2_grpc, tally_pb2, tally_pb2_grpc

log = structlog.get_logger(__name__)

AREAS_PER_CALL = 500  # GetAreas chunk: large enough to amortize the call, small enough for one message
FLUSH_FILES = 2000  # files handed to the sink at once
# Changes one cycle takes on (whole sequences, so a little more): behind a backlog, cycles stay short
# and the national numbers fresh, while the TPS files catch up over the next cycles.
CYCLE_CHANGES = 20_000
TALLY_TIMEOUT_S = 2.0


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

    def add(self, contest: str, code: str) -> None:
        if len(code) == 13:
            self.tps[contest].add(code)
            self.areas[contest].add(code[:10])
        else:
            self.areas[contest].add(code)


class Publisher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        sink: Sink,
        aggregate: aggregate_pb2_grpc.AggregateServiceAsyncStub,
        tally: tally_pb2_grpc.TallyServiceAsyncStub | None,
        contests: dict[str, Contest],
    ) -> None:
        self.pool = pool
        self.sink = sink
        self.aggregate = aggregate
        self.tally = tally
        self.contests = contests
        self._photo_types: dict[str, str] = {}  # sha256 → content type, of photos known to be in the sink
        self._assets_written = False

    async def cycle(self, *, full: bool = False) -> CycleResult | None:
        """Publish what changed; None when nothing did. `full` rewrites every file (`suara publish rebuild`)."""
        started = time.perf_counter()
        cursor = await self.pool.fetchrow(QUERIES.cursor)
        registry = await self.pool.fetchrow(QUERIES.registry_load)
        registry_load = None if registry is None else registry["id"]
        full = full or cursor["sequence"] == 0 or cursor["registry_load"] != registry_load
        work, sequence = await self._changes(cursor["sequence"], collect=not full)
        if not full and not work.areas:
            return None
        snapshot = cursor["snapshot"] + 1
        no_data_ts = documents.wib(int(registry["loaded_at"].timestamp() * 1000)) if registry else ""
        result = CycleResult(snapshot=snapshot, sequence=sequence, full=full)
        # Overlapping writes with rendering pays in an incremental cycle (1.7 s against 2.3 s for 1,000
        # changed TPS in `make bench`); in a full rebuild the writer threads and the renderer contend for
        # the GIL and it was slower (36 s against 28 s), so a rebuild writes in turn.
        out = _Out(self.sink, result, overlap=not full)
        try:
            if full or not self._assets_written:
                await out.add(_assets())
            nationals: dict[str, aggregate_pb2.AreaView] = {}
            for contest in self.contests.values():
                if full:
                    await out.add([SiteFile(documents.candidates_path(contest.id), _candidates(contest, no_data_ts))])
                    # The "no data yet" TPS file, once, in place before any TPS file names it as `same_as`:
                    # most TPS files of a rebuild are this one, and a LocalSink links them to it (~100 µs
                    # per TPS file and .gz, against 300-500 µs written). Written to every sink: same site.
                    no_data = SiteFile(documents.no_data_path(contest.id),
                                       documents.dumps(documents.no_data_tps(no_data_ts)))  # fmt: skip
                    await out.add([no_data])
                    await out.flush()
                    async for view in self._every_area(contest.id):
                        await self._render(out, contest, view, None, no_data_ts, full=True, nationals=nationals,
                                           no_data=no_data)  # fmt: skip
                else:
                    wanted = sorted(work.areas.get(contest.id, set()), key=lambda a: (len(a), a))
                    async for view in self._iter_views(contest.id, wanted):
                        await self._render(out, contest, view, work.tps.get(contest.id, set()), no_data_ts,
                                           full=False, nationals=nationals)  # fmt: skip
                if contest.id not in nationals:
                    nationals[contest.id] = (await self._views(contest.id, [""]))[0]
                await self._history(out, contest, snapshot, nationals[contest.id], full=full)
            chain = await self._chain_head(cursor)
            caught_up = await self._nothing_after(sequence)
            await out.flush()
        except BaseException:
            await out.abandon()
            raise
        pointer = documents.pointer(
            snapshot=snapshot,
            now_unix_ms=int(time.time() * 1000),
            sequence=sequence,
            chain_head=chain,
            nationals=nationals,
            caught_up=caught_up,
        )
        await out.add([SiteFile("suara/snapshot.json", documents.dumps(pointer))])
        await out.flush()
        await self.pool.execute(
            QUERIES.commit_cycle, sequence, snapshot, chain[0] if chain else None, chain[1] if chain else None,
            result.files, full, registry_load,
        )  # fmt: skip
        self._assets_written = True
        result.seconds = time.perf_counter() - started
        log.info("published", **{k: v for k, v in vars(result).items() if k != "seconds"},
                 ms=round(result.seconds * 1000, 1))  # fmt: skip
        return result

    async def _changes(self, since: int, *, collect: bool) -> tuple[_Work, int]:
        """The changes after `since` (about CYCLE_CHANGES at most) and the sequence they reach.

        A full cycle collects none, and reaches the newest sequence: it rewrites everything.
        """
        work = _Work()
        request = aggregate_pb2.ChangesRequest(since=since, limit=CYCLE_CHANGES if collect else 1)
        response = await self.aggregate.Changes(request)
        if not collect:
            return work, response.sequence
        for change in response.changes:
            work.add(change.contest, change.area)
        # A reply holds whole sequences: up to its last one, nothing is left out.
        return work, response.changes[-1].sequence if response.changes else response.sequence

    async def _nothing_after(self, sequence: int) -> bool:
        """Whether aggregate has no change after `sequence`, asked after every area of this cycle was read.

        So when it holds, every change applied before those reads is in this snapshot's files: with the
        numbers matching what was acknowledged, the whole site shows them (the load test waits for it).
        """
        response = await self.aggregate.Changes(aggregate_pb2.ChangesRequest(since=sequence, limit=1))
        return not response.changes

    async def _views(self, contest: str, areas: Sequence[str]) -> list[aggregate_pb2.AreaView]:
        return [view async for view in self._iter_views(contest, areas)]

    async def _iter_views(self, contest: str, areas: Sequence[str]) -> AsyncIterator[aggregate_pb2.AreaView]:
        """A chunk at a time, the next one asked for while this one is rendered and written: aggregate
        reads while publish renders (one after the other, a scale-1.0 backlog drained with a core idle).
        A cycle holds two chunks of views at most, however many areas changed."""
        chunks = [areas[i : i + AREAS_PER_CALL] for i in range(0, len(areas), AREAS_PER_CALL)]
        if not chunks:
            return

        def ask(chunk: Sequence[str]) -> asyncio.Task[aggregate_pb2.GetAreasResponse]:
            request = aggregate_pb2.GetAreasRequest(contest=contest, areas=chunk)
            return asyncio.ensure_future(self.aggregate.GetAreas(request))

        ahead = ask(chunks[0])
        try:
            for i in range(len(chunks)):
                response = await ahead
                if i + 1 < len(chunks):
                    ahead = ask(chunks[i + 1])
                for view in response.views:
                    yield view
        finally:
            if not ahead.done():  # the cycle failed or was cancelled: the read ahead goes with it
                ahead.cancel()
                with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                    await ahead

    async def _every_area(self, contest: str) -> Any:
        """Level by level from nasional down to every desa (an async iterator of views)."""
        level = [""]
        while level:
            below: list[str] = []
            async for view in self._iter_views(contest, level):
                below.extend(child.area for child in view.children if len(child.area) < 13)
                yield view
            level = below

    async def _render(
        self,
        out: _Out,
        contest: Contest,
        view: aggregate_pb2.AreaView,
        changed_tps: set[str] | None,
        no_data_ts: str,
        *,
        full: bool,
        nationals: dict[str, aggregate_pb2.AreaView],
        no_data: SiteFile | None = None,
    ) -> None:
        """`no_data`: the contest's "no data yet" TPS file, already in the sink (a full cycle's)."""
        area = view.area.area
        if area == "":
            nationals[contest.id] = view
            nist = nist_report(
                contest,
                generated_at=view.last_change_at.ToDatetime(UTC),
                national=_area_result(view.area),
                provinces=[_area_result(child) for child in view.children],
            )
            await out.add([SiteFile(f"suara/nist/{contest.id}.json", nist_json(nist))])
        files = [SiteFile(documents.totals_path(contest.id, area), documents.dumps(documents.totals(contest, view)))]
        # A status file changes only with quarantine or a recap, rarely: rewritten only when it differs
        # (on a sink where reading back is cheap), which spares about a third of an incremental cycle.
        status_path = documents.status_path(contest.id, area)
        status_body = documents.dumps(documents.status(view))
        if full or not self.sink.cheap_reads or await self.sink.read(status_path) != status_body:
            files.append(SiteFile(status_path, status_body))
        if full:
            files.append(
                SiteFile(documents.region_path(contest.id, area), documents.dumps(documents.region_list(view.children)))
            )
        out.result.areas += 1
        if len(area) == 10:
            rows = [c for c in view.children if changed_tps is None or c.area in changed_tps]
            await self._photos(out, rows)
            for row in rows:
                path = f"pemilu/hhcw/{contest.id}/{documents.area_path(row.area)}.json"
                if no_data is not None and row.version == 0:  # documents.tps would give no_data's body
                    files.append(SiteFile(path, no_data.body, same_as=no_data.path))
                else:
                    doc = documents.tps(contest, row, self._photo_types, no_data_ts)
                    files.append(SiteFile(path, documents.dumps(doc)))
            out.result.tps_files += len(rows)
        await out.add(files)

    async def _photos(self, out: _Out, rows: Iterable[aggregate_pb2.AreaRow]) -> None:
        """Copy the photos these TPS files reference into the sink, once each (they never change)."""
        for sha in {sha for row in rows for sha in row.photo_sha256} - self._photo_types.keys():
            for kind in ("image/jpeg", "image/png"):
                if await self.sink.exists(documents.photo_path(sha, kind)):
                    self._photo_types[sha] = kind
                    break
            else:
                if self.tally is None:
                    raise PublishError(f"photo {sha} is needed and no tally address is configured")
                reply = await self.tally.GetPhoto(tally_pb2.GetPhotoRequest(sha256=sha), timeout=TALLY_TIMEOUT_S)
                photo = reply.photo
                path = documents.photo_path(sha, photo.content_type)
                await out.add([SiteFile(path, photo.content, content_type=photo.content_type)])
                await out.flush()  # before any TPS file that points at it
                self._photo_types[sha] = photo.content_type
                out.result.photos += 1

    async def _history(
        self, out: _Out, contest: Contest, snapshot: int, national: aggregate_pb2.AreaView, *, full: bool
    ) -> None:
        """A history entry when the national or a provincial row changed since the previous snapshot's.

        Compared with the entry of an *earlier* snapshot: a killed cycle may already have recorded this
        snapshot's, and the cycle that redoes it must still write its file and the index.
        """
        entry = documents.history_entry(contest, snapshot, national)
        async with self.pool.acquire() as conn:
            previous = await conn.fetchval(QUERIES.history_body_before, contest.id, snapshot)
            changed = previous is None or _numbers(documents.loads(previous)) != _numbers(entry)
            dropped = False
            if changed:
                body = documents.dumps(entry)
                await conn.execute(QUERIES.save_history, contest.id, snapshot, entry["ts"], body)
                await out.add([SiteFile(f"suara/riwayat/{contest.id}/{snapshot}.json", body)])
            else:  # not a new state after all: drop what a killed cycle may have recorded for it
                dropped = bool(await conn.fetchval(QUERIES.drop_history, contest.id, snapshot))
            if not (changed or dropped or full):
                return
            index = [(r["snapshot"], r["ts"]) for r in await conn.fetch(QUERIES.history_index, contest.id)]
            if full:
                for row in await conn.fetch(QUERIES.history_of, contest.id):
                    await out.add([SiteFile(f"suara/riwayat/{contest.id}/{row['snapshot']}.json", bytes(row["body"]))])
        await out.add([SiteFile(f"suara/riwayat/{contest.id}.json", documents.dumps(documents.history_index(index)))])

    async def _chain_head(self, cursor: Any) -> tuple[int, str] | None:
        """Tally's head now; while tally is unreachable, the last one published (the site keeps going)."""
        if self.tally is not None:
            try:
                reply = await self.tally.GetChainHead(tally_pb2.GetChainHeadRequest(), timeout=TALLY_TIMEOUT_S)
                return reply.chain_head.position, reply.chain_head.hash
            except grpc.aio.AioRpcError as exc:
                log.warning("chain_head_unavailable", code=exc.code().name, detail=exc.details())
        if cursor["chain_position"] is None:
            return None
        return cursor["chain_position"], cursor["chain_hash"]


class PublishError(Exception):
    """publish cannot go on: the message says why and what to do."""


class _Out:
    """Buffers files and hands them to the sink in large writes, one write at a time, in order.

    A write runs while the cycle goes on reading and rendering the next files (the sink's threads wait
    on the disk, the event loop does not), so a cycle costs about the larger of the two, not their sum.
    `flush()` returns when everything handed over is written: what must come after (a TPS file after its
    photo, the pointer after everything) is added only after a flush.
    """

    def __init__(self, sink: Sink, result: CycleResult, *, overlap: bool = True) -> None:
        self.sink = sink
        self.result = result
        self.overlap = overlap
        self.pending: list[SiteFile] = []
        self._writing: asyncio.Task[None] | None = None

    async def add(self, files: Iterable[SiteFile]) -> None:
        self.pending.extend(files)
        if len(self.pending) >= FLUSH_FILES:
            await self._hand_over()

    async def _hand_over(self) -> None:
        if not self.pending:
            return
        files, self.pending = self.pending, []
        await self._finish_write()  # writes stay in order: the next starts when the previous is done
        self._writing = asyncio.create_task(self.sink.write(files), name="publish-write")
        self.result.files += len(files)
        if not self.overlap:
            await self._finish_write()

    async def _finish_write(self) -> None:
        task, self._writing = self._writing, None
        if task is not None:
            await task

    async def flush(self) -> None:
        await self._hand_over()
        await self._finish_write()

    async def abandon(self) -> None:
        """A cycle that fails or is cancelled waits for the write under way (it must not outlive the cycle)."""
        task, self._writing = self._writing, None
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(task)


def _numbers(entry: dict[str, Any]) -> tuple[Any, Any]:
    return entry["nasional"], entry["provinsi"]


def _area_result(row: aggregate_pb2.AreaRow) -> AreaResult:
    t = row.totals
    return AreaResult(
        code=row.area,
        name=row.name,
        votes=dict(t.votes),
        suara_sah=t.suara_sah,
        suara_tidak_sah=t.suara_tidak_sah,
        suara_total=t.suara_total,
        dpt=t.dpt,
        pengguna=t.pengguna,
        tps_total=row.tps_total,
        tps_reported=row.tps_reported,
    )


def _candidates(contest: Contest, ts: str) -> bytes:
    return documents.dumps(documents.candidates(contest, ts))


def _assets() -> list[SiteFile]:
    return [SiteFile(path.name, path.read_bytes()) for path in sorted(SITE_ASSETS.iterdir()) if path.is_file()]
