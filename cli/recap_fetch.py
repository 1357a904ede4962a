"""`suara recap fetch`: an area's units and their digital numbers, from the public site or aggregate.

The site is public and cached, so an official needs no credential and the origin's load does not grow
with officials. A TPS's digital numbers are its published file (the form as signed: chart and
administrasi); one that is quarantined or has no form yet counts nothing, as aggregate counts it. A
child area's are the sum over its TPS files, so every unit's five counts are known at every level.

aggregate's GetAreas gives the same numbers in one consistent read (the site is rewritten while it is
walked), for an office that holds a reader certificate; it does not know the choices' names, which
then come from the site when one is given too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from suara.client.aggregate_stub import aggregate_stub
from suara.election.codes import TPS_LENGTH
from suara.election.recap_sheet import Choice, Counts, Snapshot, Unit, add, from_totals, vote_field
from suara.site import paths
from suara.site.audit import Reader
from suara.v1 import aggregate_pb2

FETCHERS = 8  # files read at once: a kecamatan's hundred TPS files in a few round trips


class SiteIncomplete(RuntimeError):
    """The site lacks a file the sheet needs (the area is not published for the contest, say)."""


def _need(read: Reader, path: str, what: str) -> Any:
    data = read(path)
    if data is None:
        raise SiteIncomplete(f"the site has no {path} ({what})")
    return data


def tps_counts(document: Any, choices: list[Choice]) -> Counts | None:
    """A TPS file's counts, or None when it counts nothing (no form, or quarantined)."""
    if not isinstance(document, dict) or document.get("chart") is None or not document.get("status_suara"):
        return None
    chart, admin = document["chart"], document.get("administrasi") or {}
    counts = {vote_field(c.id): int(chart.get(c.id) or 0) for c in choices}
    counts.update(
        suara_sah=int(admin.get("suara_sah", 0)),
        suara_tidak_sah=int(admin.get("suara_tidak_sah", 0)),
        suara_total=int(admin.get("suara_total", 0)),
        dpt=int(admin.get("pemilih_dpt_j", 0)),
        pengguna=int(admin.get("pengguna_total_j", 0)),
    )
    return counts


def _tps_under(read: Reader, contest: str, area: str) -> list[dict[str, Any]]:
    """Every TPS entry of the region files under `area`, walking down level by level."""
    level = [area]
    while level and len(level[0]) < TPS_LENGTH:
        found: list[dict[str, Any]] = []
        with ThreadPoolExecutor(FETCHERS) as pool:
            for children in pool.map(lambda a: _need(read, paths.region_path(contest, a), f"the areas of {a}"), level):
                found.extend(children)
        if found and len(found[0]["kode"]) == TPS_LENGTH:
            return found
        level = [child["kode"] for child in found]
    return []


def read_choices(read: Reader, contest: str) -> list[Choice]:
    candidates = _need(read, paths.candidates_path(contest), f"the choices of {contest}")
    return sorted(
        (Choice(cid, c["nama"], int(c["nomor_urut"])) for cid, c in candidates.items()), key=lambda c: c.number
    )


def read_sheet(
    read: Reader, source: str, contest: str, area: str, progress: Callable[[int, int], None] | None = None
) -> Snapshot:
    pointer = read(paths.POINTER)
    if not isinstance(pointer, dict):
        pointer = {}
    choices = read_choices(read, contest)
    parent = area[: {2: 0, 4: 2, 6: 4}[len(area)]]
    siblings = _need(read, paths.region_path(contest, parent), f"the areas of {parent or 'Indonesia'}")
    own = next((a for a in siblings if a["kode"] == area), None)
    if own is None:
        raise SiteIncomplete(f"{contest} is not held in area {area}, or the area is not published")
    children = _need(read, paths.region_path(contest, area), f"the areas of {area}")
    names = {t["kode"]: t["nama"] for t in _tps_under(read, contest, area)}
    tps = list(names)
    if len(area) == 6:  # a kecamatan: its TPS are the units, named with their desa
        desa = {c["kode"]: c["nama"] for c in children}
        units = {code: Unit(code, f"{desa.get(code[:10], code[:10])}, {names[code]}", None) for code in tps}
        child_length = TPS_LENGTH
    else:  # the child areas are the units, each the sum of its TPS
        units = {c["kode"]: Unit(c["kode"], c["nama"], None, tps_total=0) for c in children}
        child_length = {2: 4, 4: 6}[len(area)]
    done = 0
    with ThreadPoolExecutor(FETCHERS) as pool:
        for code, document in zip(tps, pool.map(lambda t: read(paths.tps_path(contest, t)), tps), strict=True):
            unit = units[code[:child_length]]
            if child_length != TPS_LENGTH:
                unit.tps_total += 1
            counts = tps_counts(document, choices)
            if counts is not None:
                unit.tps_reported += 1
                if unit.digital is None:
                    unit.digital = dict.fromkeys(counts, 0)
                add(unit.digital, counts)
            elif isinstance(document, dict) and document.get("chart") is not None:
                unit.tps_quarantined += 1
            done += 1
            if progress is not None:
                progress(done, len(tps))
    status = read(paths.status_path(contest, area))
    reconciliation = status.get("reconciliation") if isinstance(status, dict) else None
    return Snapshot(
        area=area,
        contest=contest,
        name=own["nama"],
        choices=choices,
        units=sorted(units.values(), key=lambda u: u.code),
        source=source,
        fetched_at=_now(),
        site_snapshot=pointer.get("snapshot"),
        site_ts=pointer.get("ts", ""),
        reconciliation=reconciliation,
    )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


async def read_sheet_from_aggregate(
    channel: Any, source: str, contest: str, area: str, choices: list[Choice] | None = None
) -> Snapshot:
    """The sheet from aggregate's GetAreas (a reader credential): a kecamatan's TPS through its desa,
    read in one snapshot; a higher area's child areas with their totals. `choices` name the choices
    (from the site); without them each is named by its id."""
    stub = aggregate_stub(channel)
    reply = await stub.GetAreas(aggregate_pb2.GetAreasRequest(contest=contest, areas=[area]), timeout=60)
    (view,) = reply.views
    sequence = reply.sequence
    if len(area) == 6:  # a kecamatan has far fewer desa than GetAreas' 2,000 a call
        desa = [child.area for child in view.children]
        got = await stub.GetAreas(aggregate_pb2.GetAreasRequest(contest=contest, areas=desa), timeout=60)
        sequence = got.sequence
        units = []
        for desa_view in got.views:
            for row in desa_view.children:
                counted = row.version > 0 and not row.tps_quarantined
                units.append(
                    Unit(
                        row.area,
                        f"{desa_view.area.name}, {row.name}",
                        from_totals(row.submitted) if counted else None,
                        tps_reported=int(counted),
                        tps_quarantined=int(row.tps_quarantined),
                    )
                )
    else:
        units = [
            Unit(
                row.area,
                row.name,
                from_totals(row.totals) if row.tps_reported else None,
                int(row.tps_total),
                int(row.tps_reported),
                int(row.tps_quarantined),
            )
            for row in view.children
        ]
    ids = sorted(view.area.totals.votes)
    if choices is None or sorted(c.id for c in choices) != ids:
        choices = [Choice(cid, f"choice {cid}", i) for i, cid in enumerate(ids, start=1)]
    r = view.reconciliation
    reconciliation = {
        "status": aggregate_pb2.ReconciliationStatus.Name(r.status).removeprefix("RECONCILIATION_STATUS_"),
        "recap_version": r.recap_version or None,  # as the site's status file has it: null without a recap
        "differences": [
            {"field": d.field, "recap": d.recap, "digital": d.digital, "difference": d.difference}
            for d in r.differences
        ],
    }
    return Snapshot(
        area=area,
        contest=contest,
        name=view.area.name,
        choices=choices,
        units=sorted(units, key=lambda u: u.code),
        source=source,
        fetched_at=_now(),
        site_snapshot=None,
        site_ts=f"aggregate sequence {sequence}",
        reconciliation=reconciliation,
    )
