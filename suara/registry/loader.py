"""`suara registry load`: replace the whole registry in one transaction.

Readers never see a half-loaded registry: the old rows are deleted and the new
ones copied in the same transaction, so until it commits every other
connection keeps reading the old registry (DELETE, not TRUNCATE, which would
block them instead). A transaction-scoped advisory lock serializes two loads.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from suara.election.contest import Contest
from suara.registry.areas import Area, read_areas
from suara.registry.catalog import fetch_election
from suara.registry.contests import DEFAULT_PATH, ContestConfigError, read_contests
from suara.registry.districts import abroad_tps, read_shape
from suara.registry.synthetic import Tps, synthetic_tps

_LOCK_KEY = 0x5245474C4F4144  # "REGLOAD"
_CHUNK = 100_000  # rows per COPY: one progress report each, without slowing the copy

Progress = Callable[[str, int, int], None]

ANALYZE_CONTESTS = "ANALYZE registry.contest, registry.choice, registry.district, registry.district_area"


# An election id: lowercase letters, digits, '.', '_' and '-', at most 64 (e.g. "pemilu-2024").
ELECTION_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def check_election_id(election_id: str) -> str:
    if not ELECTION_ID.fullmatch(election_id):
        raise ValueError(
            f"election id {election_id!r}: use 1 to 64 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (e.g. pemilu-2024, or gladi-2024-02 for a rehearsal)"
        )
    return election_id


class RehearsalMismatch(ValueError):
    """A load would turn a real election into a rehearsal, or a rehearsal into a real election."""


@dataclass(frozen=True)
class LoadSummary:
    load_id: int
    election_id: str
    rehearsal: bool
    areas: int
    tps: int
    dpt: int  # total registered voters over all TPS
    contests: int
    choices: int
    synthetic_scale: float | None
    seed: int | None
    seconds: float
    districts: int = 0


async def load_registry(
    conn: asyncpg.Connection,
    *,
    synthetic_scale: float | None,
    seed: int = 1,
    contests_path: Path | None = None,
    progress: Progress | None = None,
    election_id: str | None = None,
    rehearsal: bool | None = None,
    shape: Path | None = None,
) -> LoadSummary:
    """Load the real areas, the contests and (unless `synthetic_scale` is None) a synthetic TPS list.

    `election_id` names the election; None keeps the current one, or (on a first load) makes a new
    random one, so that two deployments loaded without a name (a rehearsal and the real night) never
    accept each other's forms.

    `rehearsal` marks the election a rehearsal (None: as the current one is; a first load: not). A
    database holds one kind for good: a load that would change it raises RehearsalMismatch, so a real
    election never becomes wipeable and a rehearsal's numbers are never published as real.

    `progress(phase, done, total)` is called after each step of each phase:
    read (areas), generate (TPS), delete (old rows), area, tps, contests, commit.

    `shape` (a directory such as districts.SHAPES["pemilu2024"]) loads a whole election instead of
    the contests file: every contest with its districts, generated from the directory's data files
    and `seed`, and the voters abroad (area 99 and, with `synthetic_scale`, their stations).
    """
    if not 0 <= seed < 2**63:  # registry.load.seed is a bigint
        raise ValueError(f"seed must be in [0, 2**63), not {seed}")
    if election_id is not None:
        check_election_id(election_id)
    started = time.perf_counter()
    report = progress or (lambda phase, done, total: None)
    # Everything is read and generated before the transaction, to keep it short.
    if shape is not None and contests_path is not None:
        raise ValueError("give a contests file or an election shape, not both")
    domestic = read_areas()
    areas: Sequence[Area] = domestic
    contests: Sequence[Contest]
    if shape is None:
        contests = read_contests(contests_path)
        _check_scopes([c.scope for c in contests], {a.code for a in areas if a.level <= 2}, contests_path)
    else:
        election = read_shape(shape, domestic, seed)
        contests = election.contests
        areas = (*domestic, *election.abroad_areas)
    report("read", len(areas), len(areas))
    tps: list[Tps] = []
    if synthetic_scale is not None:
        tps = synthetic_tps(domestic, scale=synthetic_scale, seed=seed)
        if shape is not None:
            tps += abroad_tps(election, scale=synthetic_scale, seed=seed)  # "99…" sorts after every province
        report("generate", len(tps), len(tps))

    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        current, was_rehearsal = await fetch_election(conn)
        if election_id is None:
            election_id = current or f"election-{secrets.token_hex(6)}"
        if rehearsal is None:
            rehearsal = was_rehearsal
        elif current and rehearsal != was_rehearsal:
            raise RehearsalMismatch(
                f"this database holds {'rehearsal' if was_rehearsal else 'real election'} {current!r}: "
                + (
                    "a rehearsal never becomes the real election; wipe it (`suara rehearsal wipe`) and load the "
                    "real election into a fresh database"
                    if was_rehearsal
                    else "a real election's database never becomes a rehearsal; give the rehearsal its own database"
                )
            )
        # Children first; choice rows go with their contest (ON DELETE CASCADE). The cascades' plans
        # follow the statistics: ones taken of a small registry, with a large one loaded since, make
        # each cascaded row scan the whole choice table (minutes for a Pemilu's 336k choices).
        await conn.execute(ANALYZE_CONTESTS)
        deleted = 0
        for table in ("tps", "contest", "area"):
            status = await conn.execute(f"DELETE FROM registry.{table}")
            deleted += int(status.split()[-1])  # "DELETE <rows>"
        report("delete", deleted, deleted)
        await _copy(conn, "area", ("code", "parent", "level", "name"), _area_rows(areas), report)
        await _copy(conn, "tps", ("code", "desa", "number", "dpt"), tps, report)
        await conn.copy_records_to_table(
            "contest",
            records=[(c.id, c.name, c.scope, c.max_voters_per_tps, c.jenis) for c in contests],
            columns=("id", "name", "scope", "max_voters_per_tps", "kind"),
            schema_name="registry",
        )
        districts = [(c.id, c.jenis, d.code, d.name, d.seats) for c in contests for d in c.districts]
        await conn.copy_records_to_table(
            "district", records=districts, columns=("contest", "kind", "code", "name", "seats"), schema_name="registry"
        )
        await conn.copy_records_to_table(
            "district_area",
            records=[(c.id, d.code, a) for c in contests for d in c.districts for a in d.areas],
            columns=("contest", "district", "area"),
            schema_name="registry",
        )
        choices = [
            (c.id, ch.id, ch.nama, ch.nomor_urut, ch.warna, ch.district, ch.party, ch.region)
            for c in contests
            for ch in c.choices
        ]
        await conn.copy_records_to_table(
            "choice",
            records=choices,
            columns=("contest", "id", "nama", "nomor_urut", "warna", "district", "party", "region"),
            schema_name="registry",
        )
        report("contests", len(contests), len(contests))
        load_id = await conn.fetchval(
            "INSERT INTO registry.load (synthetic_scale, seed, areas, tps, contests, election_id, rehearsal)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            synthetic_scale,
            seed if synthetic_scale is not None else None,
            len(areas),
            len(tps),
            len(contests),
            election_id,
            rehearsal,
        )
    # Fresh planner statistics, so the first queries after a reload do not
    # plan for the old table sizes (autovacuum would get there, later).
    await conn.execute(f"{ANALYZE_CONTESTS}, registry.area, registry.tps")
    report("commit", 1, 1)
    return LoadSummary(
        load_id=int(load_id),
        election_id=election_id,
        rehearsal=rehearsal,
        areas=len(areas),
        tps=len(tps),
        dpt=sum(t.dpt for t in tps),
        contests=len(contests),
        choices=len(choices),
        synthetic_scale=synthetic_scale,
        seed=seed if synthetic_scale is not None else None,
        seconds=time.perf_counter() - started,
        districts=len(districts),
    )


def _area_rows(areas: Sequence[Area]) -> list[tuple[str, str | None, int, str]]:
    return [(a.code, a.parent, a.level, a.name) for a in areas]


async def _copy(
    conn: asyncpg.Connection,
    table: str,
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    report: Progress,
) -> None:
    report(table, 0, len(rows))
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start : start + _CHUNK]
        await conn.copy_records_to_table(table, records=chunk, columns=columns, schema_name="registry")
        report(table, start + len(chunk), len(rows))


def _check_scopes(scopes: list[str], regions: set[str], path: Path | None) -> None:
    unknown = sorted({s for s in scopes if s and s not in regions})
    if unknown:
        raise ContestConfigError(
            f"{path or DEFAULT_PATH}: no province or kabupaten/kota with code {', '.join(unknown)}"
        )
