"""`suara recap fetch`'s reading of the public site: an area's units and their digital numbers.

The site is public and cached, so an official needs no credential and the origin's load does not grow
with officials. A TPS's digital numbers are its published file (the form as signed: chart and
administrasi); one that is quarantined or has no form yet counts nothing, as aggregate counts it. A
child area's are the sum over its TPS files, so every unit's five counts are known at every level.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from services.publish import paths
from services.publish.audit import Reader
from suara.election.codes import TPS_LENGTH
from suara.election.recap_sheet import Choice, Counts, Snapshot, Unit, add, vote_field

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


def read_sheet(
    read: Reader, source: str, contest: str, area: str, progress: Callable[[int, int], None] | None = None
) -> Snapshot:
    pointer = read(paths.POINTER)
    if not isinstance(pointer, dict):
        pointer = {}
    candidates = _need(read, paths.candidates_path(contest), f"the choices of {contest}")
    choices = sorted(
        (Choice(cid, c["nama"], int(c["nomor_urut"])) for cid, c in candidates.items()), key=lambda c: c.number
    )
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
        fetched_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        site_snapshot=pointer.get("snapshot"),
        site_ts=pointer.get("ts", ""),
        reconciliation=reconciliation,
    )
