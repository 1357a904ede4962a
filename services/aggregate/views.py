"""Reads: one area with its children, and the change log. Each read is one snapshot with the sequence."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from google.protobuf.timestamp_pb2 import Timestamp

from services.aggregate.catalog import Catalog
from services.aggregate.errors import InvalidRequest
from services.aggregate.queries import QUERIES
from services.aggregate.recap import reconcile
from suara.election.codes import DESA_LENGTH, LENGTHS, RECAP_LENGTHS, TPS_LENGTH, is_area_code
from suara.election.contest import Contest
from suara.runtime import tracing
from suara.runtime.database import Database
from suara.runtime.errors import FieldProblem, NotFound
from suara.runtime.wire import AGGREGATE_MAX_AREAS
from suara.v1 import aggregate_pb2

NATIONAL_NAME = "Indonesia"
_LENGTHS = "/".join(map(str, LENGTHS))  # 2/4/6/10/13
DEFAULT_CHANGES_LIMIT = 10_000
# Trace contexts in one Changes reply (ChangesResponse.traces): OpenTelemetry's default link limit per span.
CHANGES_TRACES_LIMIT = 128
_SCALARS = ("suara_sah", "suara_tidak_sah", "suara_total", "dpt", "pengguna")


def _totals(row: Any, choices: Sequence[str], zero: bool = False) -> aggregate_pb2.Totals:
    """Totals from a row; zero when the row is missing (no data) or `zero` (a quarantined TPS adds nothing)."""
    if row is None or row["votes"] is None or zero:
        return aggregate_pb2.Totals(votes=dict.fromkeys(choices, 0))
    return aggregate_pb2.Totals(
        votes=dict(zip(choices, row["votes"], strict=True)), **{name: row[name] for name in _SCALARS}
    )


def _area_row(code: str, name: str, row: Any, choices: Sequence[str]) -> aggregate_pb2.AreaRow:
    if row is None or row["tps_total"] is None:
        return aggregate_pb2.AreaRow(area=code, name=name, totals=_totals(None, choices))
    return aggregate_pb2.AreaRow(
        area=code,
        name=name,
        totals=_totals(row, choices),
        tps_total=row["tps_total"],
        tps_reported=row["tps_reported"],
        tps_quarantined=row["tps_quarantined"],
        changed_sequence=row["changed_sequence"],
    )


def _tps_row(row: asyncpg.Record, choices: Sequence[str]) -> aggregate_pb2.AreaRow:
    reported = row["version"] is not None
    quarantined = bool(row["quarantined"])
    out = aggregate_pb2.AreaRow(
        area=row["code"],
        name=f"TPS {row['code'][-3:]}",
        totals=_totals(row, choices, zero=quarantined),
        tps_total=1,
        tps_reported=int(reported and not quarantined),
        tps_quarantined=int(quarantined),
        version=row["version"] or 0,
        changed_sequence=row["changed_sequence"] or 0,
        changed_at=_changed_at(row),
    )
    if reported:
        out.submitted.CopyFrom(_totals(row, choices))
        out.failed_checks.extend(row["failed_checks"])
        out.photo_sha256.extend(row["photos"])
        if row["administrasi"] is not None:
            out.administrasi.update(json.loads(row["administrasi"]))
    return out


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _changed_at(row: Any) -> Timestamp | None:
    """When the row last changed; None (the field stays unset) for no row or one never changed."""
    when = None if row is None else row["changed_at"]
    if when is None:
        return None
    # Exact integer arithmetic, as Timestamp.FromDatetime does, at half its cost: it runs for every row
    # of every view.
    micros = (when - _EPOCH) // _MICROSECOND
    return Timestamp(seconds=micros // 1_000_000, nanos=micros % 1_000_000 * 1000)


def _check_area(contest: Contest, area: str, field: str) -> None:
    if not (area == "" or is_area_code(area)):
        raise InvalidRequest([FieldProblem(field, f"must be '' (nasional) or a {_LENGTHS}-digit code, got {area!r}")])
    if not (area.startswith(contest.scope) or contest.scope.startswith(area)):
        raise NotFound(f"{field}: contest {contest.id!r} is not held in area {area!r} (its scope is {contest.scope!r})")


async def get_area(db: Database, catalog: Catalog, area: str, contest_id: str) -> aggregate_pb2.AreaView:
    contest = catalog.contests.get(contest_id)
    if contest is None:
        raise InvalidRequest([FieldProblem("contest", f"unknown contest {contest_id!r}")])
    _check_area(contest, area, "area")
    choices = catalog.choice_ids(contest_id)
    async with db.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        sequence = await conn.fetchval(QUERIES.head)  # the same snapshot as the rows below
        if len(area) == TPS_LENGTH:
            tps = await conn.fetchrow(QUERIES.tps_row, contest_id, area)
            if tps is None:
                raise NotFound(f"no TPS {area!r} in the registry")
            return aggregate_pb2.AreaView(
                area=_tps_row(tps, choices), sequence=sequence, last_change_at=_changed_at(tps)
            )
        name = NATIONAL_NAME if area == "" else await conn.fetchval(QUERIES.area_name, area)
        if name is None:
            raise NotFound(f"no area {area!r} in the registry")
        row = await conn.fetchrow(QUERIES.area_row, contest_id, area)
        if len(area) == DESA_LENGTH:
            kids = [_tps_row(r, choices) for r in await conn.fetch(QUERIES.child_tps, contest_id, area, contest.scope)]
        else:
            kids = [
                _area_row(r["code"], r["name"], r, choices)
                for r in await conn.fetch(QUERIES.child_areas, contest_id, area, contest.scope)
            ]
    return aggregate_pb2.AreaView(
        area=_area_row(area, name, row, choices), children=kids, sequence=sequence, last_change_at=_changed_at(row)
    )


async def get_areas(
    db: Database, catalog: Catalog, contest_id: str, areas: Sequence[str]
) -> aggregate_pb2.GetAreasResponse:
    """Many areas in one snapshot, in a handful of set-based queries whatever their number."""
    contest = catalog.contests.get(contest_id)
    if contest is None:
        raise InvalidRequest([FieldProblem("contest", f"unknown contest {contest_id!r}")])
    if len(areas) > AGGREGATE_MAX_AREAS:
        raise InvalidRequest([FieldProblem("areas", f"at most {AGGREGATE_MAX_AREAS} areas per call, got {len(areas)}")])
    for i, area in enumerate(areas):
        _check_area(contest, area, f"areas[{i}]")
        if len(area) == TPS_LENGTH:
            raise InvalidRequest([FieldProblem(f"areas[{i}]", "a TPS is read through its desa (its parent's view)")])
    choices = catalog.choice_ids(contest_id)
    wanted = list(dict.fromkeys(areas))
    desas = [a for a in wanted if len(a) == DESA_LENGTH]
    async with db.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        sequence = await conn.fetchval(QUERIES.head)
        rows = {r["code"]: r for r in await conn.fetch(QUERIES.areas_rows, contest_id, wanted)}
        children: dict[str, list[aggregate_pb2.AreaRow]] = {a: [] for a in wanted}
        child_rows = await conn.fetch(QUERIES.areas_children, contest_id, [a for a in wanted if len(a) < DESA_LENGTH])
        for r in child_rows:
            children[r["parent"]].append(_area_row(r["code"], r["name"], r, choices))
        for r in await conn.fetch(QUERIES.desas_tps, contest_id, desas, contest.scope) if desas else ():
            children[r["desa"]].append(_tps_row(r, choices))
        recap_areas = [a for a in wanted if len(a) in RECAP_LENGTHS]
        recap_areas += [r["code"] for r in child_rows if len(r["code"]) in RECAP_LENGTHS]
        recaps = {r["area"]: r for r in await conn.fetch(QUERIES.current_recaps, contest_id, recap_areas)}
    response = aggregate_pb2.GetAreasResponse(sequence=sequence)
    digital = {**{r["code"]: r for r in child_rows}, **rows}
    for i, area in enumerate(areas):
        row = rows.get(area)
        if row is None:
            raise NotFound(f"areas[{i}]: {contest_id} has no TPS in area {area!r}")
        view = response.views.add(
            area=_area_row(area, NATIONAL_NAME if area == "" else row["name"], row, choices),
            children=children[area],
            sequence=sequence,
            last_change_at=_changed_at(row),
        )
        if view.HasField("last_change_at"):
            view.area.changed_at.CopyFrom(view.last_change_at)
        if len(area) in RECAP_LENGTHS:
            view.reconciliation.CopyFrom(reconcile(area, contest_id, recaps.get(area), digital[area], choices))
            view.area.reconciliation = view.reconciliation.status
        for child in view.children:
            changed = _changed_at(digital.get(child.area))
            if changed is not None:
                child.changed_at.CopyFrom(changed)
            if len(child.area) in RECAP_LENGTHS:
                child.reconciliation = reconcile(
                    child.area, contest_id, recaps.get(child.area), digital[child.area], choices
                ).status
    return response


async def changes(db: Database, since: int, limit: int) -> aggregate_pb2.ChangesResponse:
    """Whole sequences only: a reply never ends in the middle of one, so `since` = the last sequence is safe."""
    if limit < 0:
        raise InvalidRequest([FieldProblem("limit", f"must not be negative, got {limit}")])
    limit = limit or DEFAULT_CHANGES_LIMIT
    async with db.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        newest = await conn.fetchval(QUERIES.head)
        rows = list(await conn.fetch(QUERIES.changes_since, since, limit + 1))
        if len(rows) > limit:
            cut = rows[limit]["sequence"]
            rows = [r for r in rows[:limit] if r["sequence"] != cut]
            if not rows:  # one sequence larger than the limit: give it whole rather than never progress
                rows = list(await conn.fetch(QUERIES.changes_of_sequence, cut))
        traces = []
        if rows and tracing.enabled():  # only a traced aggregate keeps them (rollup.py)
            traces = await conn.fetch(QUERIES.traces_between, since, rows[-1]["sequence"], CHANGES_TRACES_LIMIT)
    return aggregate_pb2.ChangesResponse(
        changes=[aggregate_pb2.Change(sequence=r["sequence"], area=r["area"], contest=r["contest"]) for r in rows],
        sequence=newest,
        traces=[aggregate_pb2.ChangeTrace(sequence=r["sequence"], traceparent=r["traceparent"]) for r in traces],
    )
