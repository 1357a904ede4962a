"""What the registry holds, read through its own queries: for the CLI and operators, not the hot path."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from suara.registry.queries import QUERIES


@dataclass(frozen=True)
class ContestSummary:
    id: str
    name: str
    scope: str | None
    max_voters_per_tps: int
    choices: int
    districts: int = 0  # 0: one district, its scope


@dataclass(frozen=True)
class LoadRecord:
    id: int
    loaded_at: datetime
    synthetic_scale: float | None
    seed: int | None
    election_id: str | None = None
    rehearsal: bool = False


@dataclass(frozen=True)
class RegistrySummary:
    areas_by_level: dict[int, int]
    tps: int
    dpt: int
    contests: list[ContestSummary]
    last_load: LoadRecord | None


async def is_migrated(conn: asyncpg.Connection) -> bool:
    return await conn.fetchval(QUERIES.migrated) is True


async def tps_count(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval(QUERIES.tps_count))


async def sample_tps(conn: asyncpg.Connection, n: int) -> list[str]:
    """`n` TPS codes chosen at random (fewer when the registry holds fewer)."""
    return [r["code"] for r in await conn.fetch(QUERIES.sample_tps, n)]


async def area_exists(conn: asyncpg.Connection, code: str) -> bool:
    return bool(await conn.fetchval(QUERIES.area_exists, code))


async def summarize(conn: asyncpg.Connection) -> RegistrySummary:
    levels = {int(r["level"]): int(r["areas"]) for r in await conn.fetch(QUERIES.areas_by_level)}
    totals = await conn.fetchrow(QUERIES.tps_totals)
    contests = [
        ContestSummary(r["id"], r["name"], r["scope"], r["max_voters_per_tps"], r["choices"], r["districts"])
        for r in await conn.fetch(QUERIES.contest_summaries)
    ]
    last = await conn.fetchrow(QUERIES.last_load)
    load = (
        None
        if last is None
        else LoadRecord(
            last["id"], last["loaded_at"], last["synthetic_scale"], last["seed"], last["election_id"], last["rehearsal"]
        )
    )
    return RegistrySummary(levels, int(totals["tps"]), int(totals["dpt"]), contests, load)
