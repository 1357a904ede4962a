"""A cycle's write pipeline: aggregate's views in, files in the sink out.

Its stages overlap, so a cycle costs about its slowest stage rather than their sum:
- reading (`read_views`): areas are asked of aggregate a chunk at a time, the next chunk while this
  one is rendered;
- rendering (`Renderer`): each view becomes its files, with the photos its TPS files show copied in
  first; in a full cycle every TPS file without a form names the contest's "no data yet" file as
  `same_as`, which a sink that can links instead of writing;
- writing (`Writer`): files are buffered and handed to the sink in large writes, one at a time and in
  order, the next ones rendered while the sink compresses and writes the previous.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC
from typing import Any, Protocol

import grpc
import structlog

from services.publish import documents
from services.publish.files import SiteFile
from services.publish.nist import AreaResult, nist_json, nist_report
from services.publish.sinks.base import Sink
from suara.election import photos as photo_rules
from suara.election.codes import DESA_LENGTH, KECAMATAN_LENGTH, TPS_LENGTH
from suara.election.contest import Contest
from suara.site import paths
from suara.v1 import aggregate_pb2, aggregate_pb2_grpc, tally_pb2, tally_pb2_grpc

log = structlog.stdlib.get_logger("suara.publish.pipeline")

AREAS_PER_CALL = 500  # GetAreas chunk: large enough to amortize the call, small enough for one message
FLUSH_FILES = 2000  # files handed to the sink at once
TALLY_TIMEOUT_S = 2.0


class PublishError(Exception):
    """publish cannot go on: the message says why and what to do."""


class Counts(Protocol):
    """What a cycle wrote, counted as the pipeline goes (a CycleResult)."""

    files: int
    areas: int
    tps_files: int
    photos: int


async def read_views(
    aggregate: aggregate_pb2_grpc.AggregateServiceAsyncStub, contest: str, areas: Sequence[str]
) -> AsyncIterator[aggregate_pb2.AreaView]:
    """A chunk at a time, the next one asked for while this one is rendered and written: aggregate
    reads while publish renders (one after the other, a scale-1.0 backlog drained with a core idle).
    A cycle holds two chunks of views at most, however many areas changed."""
    chunks = [areas[i : i + AREAS_PER_CALL] for i in range(0, len(areas), AREAS_PER_CALL)]
    if not chunks:
        return

    def ask(chunk: Sequence[str]) -> asyncio.Task[aggregate_pb2.GetAreasResponse]:
        request = aggregate_pb2.GetAreasRequest(contest=contest, areas=chunk)
        return asyncio.ensure_future(aggregate.GetAreas(request))

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


async def every_area(
    aggregate: aggregate_pb2_grpc.AggregateServiceAsyncStub, contest: str
) -> AsyncIterator[aggregate_pb2.AreaView]:
    """Level by level from nasional down to every desa."""
    level = [""]
    while level:
        below: list[str] = []
        async for view in read_views(aggregate, contest, level):
            below.extend(child.area for child in view.children if len(child.area) < TPS_LENGTH)
            yield view
        level = below


class Writer:
    """Buffers files and hands them to the sink in large writes, one write at a time, in order.

    A write runs while the cycle goes on reading and rendering the next files (the sink's threads wait
    on the disk, the event loop does not), so a cycle costs about the larger of the two, not their sum.
    `flush()` returns when everything handed over is written: what must come after (a TPS file after its
    photo, the pointer after everything) is added only after a flush.
    """

    def __init__(self, sink: Sink, counts: Counts, *, overlap: bool = True) -> None:
        self.sink = sink
        self.counts = counts
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
        self.counts.files += len(files)
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


class Renderer:
    """Turns views into files, for the writer's sink; remembers, across cycles, which photos it holds."""

    def __init__(
        self,
        tally: tally_pb2_grpc.TallyServiceAsyncStub | None,
        photo_base: str | None = None,
        aggregate: aggregate_pb2_grpc.AggregateServiceAsyncStub | None = None,
    ) -> None:
        self.tally = tally
        self.aggregate = aggregate  # for the TPS a kecamatan's recap file lists (None: no recap files)
        # Area → recaps in MISMATCH at or below it, of the contest being rendered (documents.mismatch_counts).
        self.recap_mismatches: dict[str, int] = {}
        self.photo_base = photo_base  # set: photos are linked there, never copied (tally verified them on the way in)
        self._photo_types: dict[str, str] = {}  # sha256 → content type, of photos known to be in the sink
        # sha256 → why not: photos tally gave that fail their hash or do not decode, never published.
        # Their TPS files show no photo there; their desa's status file says so (photos_unavailable).
        self.unavailable: dict[str, str] = {}

    async def no_data(self, out: Writer, contest: Contest, no_data_ts: str) -> SiteFile:
        """A full cycle's first files of a contest: its candidates, and its "no data yet" TPS file, in the
        sink (flushed) before any TPS file names it as `same_as`. Most TPS files of a rebuild are this
        one, and a sink that can link makes them links to it, cheaper than writing each. Written to every
        sink: the same site everywhere."""
        candidates = documents.dumps(documents.candidates(contest, no_data_ts))
        await out.add([SiteFile(paths.candidates_path(contest.id), candidates)])
        no_data = SiteFile(paths.no_data_path(contest.id), documents.dumps(documents.no_data_tps(no_data_ts)))
        await out.add([no_data])
        await out.flush()
        return no_data

    async def area(
        self,
        out: Writer,
        contest: Contest,
        view: aggregate_pb2.AreaView,
        changed_tps: set[str] | None,
        no_data_ts: str,
        *,
        full: bool,
        no_data: SiteFile | None = None,
    ) -> None:
        """One area's files, and its TPS files (those in `changed_tps`; every one when None).

        `no_data`: the contest's "no data yet" TPS file, already in the sink (a full cycle's)."""
        area = view.area.area
        if area == "":
            nist = nist_report(
                contest,
                generated_at=view.last_change_at.ToDatetime(UTC),
                national=_area_result(view.area),
                provinces=[_area_result(child) for child in view.children],
            )
            await out.add([SiteFile(paths.nist_path(contest.id), nist_json(nist))])
        files = [SiteFile(paths.totals_path(contest.id, area), documents.dumps(documents.totals(contest, view)))]
        rows: list[aggregate_pb2.AreaRow] = []
        if len(area) == DESA_LENGTH:
            rows = [c for c in view.children if changed_tps is None or c.area in changed_tps]
            await self._photos(out, rows)  # first: the status file says which could not be published
        # A status file changes only with quarantine or a recap, rarely: rewritten only when it differs
        # (on a sink where reading back is cheap), which spares about a third of an incremental cycle.
        status_path = paths.status_path(contest.id, area)
        status_body = documents.dumps(self._flag_photos(documents.status(view, self.recap_mismatches), view))
        if full or not out.sink.cheap_reads or await out.sink.read(status_path) != status_body:
            files.append(SiteFile(status_path, status_body))
        if documents.has_recap(view) and self.aggregate is not None:
            units = await self._recap_units(contest.id, view)
            recap = documents.dumps(documents.recap_units(view, units))
            files.append(SiteFile(paths.recap_path(contest.id, area), recap))
        if full:
            files.append(
                SiteFile(paths.region_path(contest.id, area), documents.dumps(documents.region_list(view.children)))
            )
        out.counts.areas += 1
        if len(area) == DESA_LENGTH:
            for row in rows:
                path = paths.tps_path(contest.id, row.area)
                if no_data is not None and row.version == 0:  # documents.tps would give no_data's body
                    files.append(SiteFile(path, no_data.body, same_as=no_data.path))
                else:
                    doc = documents.tps(contest, row, self._photo_types, no_data_ts, photo_base=self.photo_base)
                    held = [sha in self.unavailable for sha in row.photo_sha256]
                    doc["images"] = [None if i < len(held) and held[i] else p for i, p in enumerate(doc["images"])]
                    files.append(SiteFile(path, documents.dumps(doc)))
            out.counts.tps_files += len(rows)
        await out.add(files)

    async def _recap_units(self, contest: str, view: aggregate_pb2.AreaView) -> list[aggregate_pb2.AreaRow]:
        """The units a recapped area's recap sums: a kecamatan's TPS (read through its desa, the only way
        aggregate gives TPS), else the area's children. Only when it differs: a matching recap lists none."""
        if not view.reconciliation.differences:
            return []
        if len(view.area.area) != KECAMATAN_LENGTH:
            return list(view.children)
        assert self.aggregate is not None
        return [tps async for desa in read_views(self.aggregate, contest, [c.area for c in view.children])
                for tps in desa.children]  # fmt: skip

    def _flag_photos(self, status: dict[str, Any], view: aggregate_pb2.AreaView) -> dict[str, Any]:
        """A desa's status file, with each TPS whose photos could not be published flagged, and why."""
        children: dict[str, Any] = status["children"]
        flagged = False
        for child in view.children:
            held = [sha for sha in child.photo_sha256 if sha in self.unavailable]
            if held:
                entry = children.setdefault(child.area, {})
                entry["photos_unavailable"] = [{"sha256": sha, "reason": self.unavailable[sha]} for sha in held]
                flagged = True
        if flagged:
            status["children"] = dict(sorted(children.items()))
        return status

    async def _photos(self, out: Writer, rows: Sequence[aggregate_pb2.AreaRow]) -> None:
        """Copy the photos these TPS files reference into the sink, once each (they never change); none
        when they are linked in tally's bucket.

        The photos of one desa are looked up and fetched together and written in one flush, before any
        TPS file that points at them: one round trip to the sink per desa, not one per photo."""
        if self.photo_base is not None:
            return
        missing = sorted({sha for row in rows for sha in row.photo_sha256} - self._photo_types.keys())
        missing = [sha for sha in missing if sha not in self.unavailable]
        if not missing:
            return
        tasks = [asyncio.ensure_future(self._photo(out.sink, sha, rows)) for sha in missing]
        try:
            found = await asyncio.gather(*tasks)
        except BaseException:  # one failing (the sink or tally unreachable): the rest go, its error as it is
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        new = [(sha, photo) for sha, (in_sink, photo) in zip(missing, found, strict=True) if not in_sink and photo]
        if new:
            await out.add(SiteFile(paths.photo_path(sha, p.content_type), p.content, content_type=p.content_type)
                          for sha, p in new)  # fmt: skip
            await out.flush()  # before any TPS file that points at them
        for sha, (in_sink, photo) in zip(missing, found, strict=True):
            if in_sink is not None:
                self._photo_types[sha] = in_sink
            elif photo is not None:
                self._photo_types[sha] = photo.content_type
        out.counts.photos += len(new)

    async def _photo(
        self, sink: Sink, sha: str, rows: Sequence[aggregate_pb2.AreaRow]
    ) -> tuple[str | None, tally_pb2.StoredPhoto | None]:
        """(its type, when the sink has it already; else None, and the photo to copy, or None when it cannot
        be published: recorded in `unavailable`)."""
        for kind in ("image/jpeg", "image/png"):
            if await sink.exists(paths.photo_path(sha, kind)):
                return kind, None
        if self.tally is None:
            raise PublishError(f"photo {sha} is needed and no tally address is configured")
        try:
            reply = await self.tally.GetPhoto(tally_pb2.GetPhotoRequest(sha256=sha), timeout=TALLY_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise  # tally unreachable or the like: the cycle is retried
            # Recorded but gone from tally's photo store: one lost photo must not stop the site. The
            # reason is published; tally's details (where its store is) go to the log only.
            log.error("photo_missing_in_tally", sha256=sha, detail=exc.details())
            reply = tally_pb2.GetPhotoResponse()
            wrong: str | None = "missing from tally's photo store"
        else:
            wrong = photo_rules.verified(reply.photo.content, sha)
        photo = reply.photo
        if wrong is None and photo_rules.sniff(photo.content) != photo.content_type:
            wrong = f"stored as {photo.content_type}, but its bytes are {photo_rules.sniff(photo.content)}"
        if wrong is not None:
            # Not published: the page shows the slot as unavailable. An operator repairs it in
            # tally (docs/runbook.md) and restarts publish, which tries it again.
            self.unavailable[sha] = wrong
            tps = sorted(row.area for row in rows if sha in row.photo_sha256)
            log.error("photo_unpublished", sha256=sha, tps=tps, reason=wrong)
            return None, None
        return None, photo


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
