"""The change feed and the bulk downloads: what heavy readers (media, parties, monitors) follow instead
of the whole tree of files (docs/layout.md, "The change feed" and "Bulk downloads").

A snapshot's feed pages list the areas and TPS its cycle read, with their new numbers. They are saved
in the transaction that commits the snapshot and written to the site only after it, then the feed head:
a page at its path is final (immutable), and one a publisher died before writing is written, with the
same bytes, by the next cycle. Pages hold FEED_PAGE_ENTRIES entries at most.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
from collections.abc import AsyncIterator, Sequence
from typing import Any

from services.publish import documents
from services.publish.files import SiteFile
from suara.election.codes import DESA_LENGTH
from suara.election.contest import Contest
from suara.site import paths
from suara.v1 import aggregate_pb2

FEED_PAGE_ENTRIES = 1000  # areas and TPS per page: about 150 KB of JSON, 15 KB gzipped, at most
FEED_KEPT_IN_DATABASE = 100  # snapshots whose pages the database keeps to write them again
FROM_ZERO_ENTRIES = 50_000  # a first reset lists at most this many areas and TPS (50 pages); beyond, a baseline
BULK_INTERVAL_S = 300.0
BULK_BATCH_AREAS = 500  # desa views per hand-over to the bulk file's thread: a GetAreas chunk
BULK_FIXED_COLUMNS = ("kode_tps", "versi", "status", "suara_sah", "suara_tidak_sah", "suara_total")


def _numbers(contest: Contest, totals: aggregate_pb2.Totals) -> dict[str, Any]:
    return {
        "votes": {c.id: totals.votes.get(c.id, 0) for c in contest.choices},
        "suara_sah": totals.suara_sah,
        "suara_tidak_sah": totals.suara_tidak_sah,
        "suara_total": totals.suara_total,
    }


def tps_status(row: aggregate_pb2.AreaRow) -> str:
    """ "kosong" (no form yet), "karantina" (a quarantined form: counts nowhere) or "dihitung" (counted)."""
    if row.version == 0:
        return "kosong"
    return "karantina" if row.tps_quarantined else "dihitung"


class FeedCollector:
    """One cycle's feed entries, in the order the cycle reads its views (bounded as the cycle is: by the
    changes it takes on, CYCLE_CHANGES)."""

    def __init__(self, *, from_zero: bool = False) -> None:
        """`from_zero`: the cycle is the first with numbers (nothing published before it but the skeleton):
        its reset lists every area and TPS that has any, so a reader starting at zero needs no baseline, as
        long as they are at most FROM_ZERO_ENTRIES (beyond, the reset has no entries, as a rebuild's)."""
        self.areas: list[dict[str, Any]] = []
        self.tps: list[dict[str, Any]] = []
        self.from_zero = from_zero

    def add_from_zero(self, contest: Contest, view: aggregate_pb2.AreaView) -> None:
        """In a cycle from zero, an area read in full: listed with its TPS that have a form, if it has any."""
        if not self.from_zero or not (view.area.tps_reported or view.area.tps_quarantined):
            return
        self.add(contest, view, {row.area for row in view.children if row.version})
        if len(self.areas) + len(self.tps) > FROM_ZERO_ENTRIES:  # the state is too large for a feed: a baseline
            self.from_zero = False
            self.areas.clear()
            self.tps.clear()

    def add(self, contest: Contest, view: aggregate_pb2.AreaView, changed_tps: set[str]) -> None:
        area = view.area
        self.areas.append(
            {
                "contest": contest.id,
                "kode": area.area,
                **_numbers(contest, area.totals),
                "progres": area.tps_reported,
                "total": area.tps_total,
                "karantina": area.tps_quarantined,
            }
        )
        if len(area.area) == DESA_LENGTH:
            for row in view.children:
                if row.area in changed_tps:
                    self.tps.append(
                        {
                            "contest": contest.id,
                            "kode": row.area,
                            "versi": row.version,
                            "status": tps_status(row),
                            # As signed (a quarantined form's too): only a "dihitung" TPS counts in its areas.
                            **_numbers(contest, row.submitted if row.version else row.totals),
                        }
                    )

    def pages(self, snapshot: int, sequence: int, ts: str, *, reset: bool) -> list[bytes]:
        """The snapshot's pages; a reset (a full cycle) has one, without entries, unless it is from zero."""
        entries = [("areas", e) for e in self.areas] + [("tps", e) for e in self.tps]
        chunks = [entries[i : i + FEED_PAGE_ENTRIES] for i in range(0, len(entries), FEED_PAGE_ENTRIES)] or [[]]
        if reset and not self.from_zero:
            chunks = [[]]
        bodies = []
        for part, chunk in enumerate(chunks):
            last = part + 1 == len(chunks)
            page = {
                "snapshot": snapshot,
                "part": part,
                "parts": len(chunks),
                "reset": reset,
                "ts": ts,
                "aggregate_sequence": sequence,
                "next": paths.feed_page_path(snapshot + 1, 0) if last else paths.feed_page_path(snapshot, part + 1),
                "areas": [e for kind, e in chunk if kind == "areas"],
                "tps": [e for kind, e in chunk if kind == "tps"],
            }
            bodies.append(documents.dumps(page))
        return bodies


def feed_head(oldest: int, newest: int, ts: str) -> dict[str, Any]:
    return {
        "oldest": oldest,
        "newest": newest,
        "ts": ts,
        "oldest_page": paths.feed_page_path(oldest, 0),
        "newest_page": paths.feed_page_path(newest, 0),
        "page_entries": FEED_PAGE_ENTRIES,
    }


class BulkCsv:
    """One contest's bulk file, gzipped as it grows: the compressed file is all it holds.

    `add` formats and compresses (about 10 s of CPU for a whole country's contest): it is called in a
    thread (`bulk_csv`), never on the event loop, one call at a time."""

    def __init__(self, contest: Contest) -> None:
        self.contest = contest
        self.rows = 0
        self._out = io.BytesIO()
        self._gz = gzip.GzipFile(fileobj=self._out, mode="wb", compresslevel=6, mtime=0)
        self._text = io.TextIOWrapper(self._gz, encoding="utf-8", newline="")
        self._writer = csv.writer(self._text, lineterminator="\n")
        self._writer.writerow([*BULK_FIXED_COLUMNS, *(c.id for c in contest.choices)])

    def add(self, views: Sequence[aggregate_pb2.AreaView]) -> None:
        """The rows of these desa views' TPS."""
        choices = [c.id for c in self.contest.choices]
        for view in views:
            for row in view.children:
                numbers = row.submitted if row.version else row.totals
                votes = numbers.votes
                self._writer.writerow(
                    [
                        row.area,
                        row.version,
                        tps_status(row),
                        numbers.suara_sah,
                        numbers.suara_tidak_sah,
                        numbers.suara_total,
                        *(votes.get(c, 0) for c in choices),
                    ]
                )
            self.rows += len(view.children)

    def finish(self) -> bytes:
        self._text.flush()
        self._text.detach()
        self._gz.close()
        return self._out.getvalue()


async def bulk_csv(
    contest: Contest, views: AsyncIterator[aggregate_pb2.AreaView], *, batch: int = BULK_BATCH_AREAS
) -> tuple[bytes, int]:
    """Every TPS of the contest, one row each: the file's gzipped body and its row count.

    The rows are formatted and compressed in a thread, `batch` desa at a time, while the next views are
    read: the event loop goes on serving cycles and status calls (it only reads from aggregate)."""
    out = BulkCsv(contest)
    pending: list[aggregate_pb2.AreaView] = []
    async for view in views:
        if len(view.area.area) == DESA_LENGTH:
            pending.append(view)
        if len(pending) >= batch:
            chunk, pending = pending, []
            await asyncio.to_thread(out.add, chunk)
    await asyncio.to_thread(out.add, pending)
    body = await asyncio.to_thread(out.finish)
    return body, out.rows


def bulk_file(contest: str, body: bytes) -> SiteFile:
    return SiteFile(paths.bulk_path(contest), body)
