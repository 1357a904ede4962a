"""Aggregate's oracle: plain Python over the updates sent, independent of the code under test.

For each (tps, contest) the highest version's update is current; a quarantined
one adds nothing but counts as quarantined. Every area is the sum of the TPS
whose code starts with its code ('' is nasional); tps_total counts the
registry's TPS where the contest is held (the TPS code starts with its scope).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import asyncpg

from suara.v1 import aggregate_pb2

PREFIXES = (0, 2, 4, 6, 10)
SCALARS = ("suara_sah", "suara_tidak_sah", "suara_total", "dpt", "pengguna")


@dataclass
class Registry:
    tps: list[str]
    scope: dict[str, str]  # contest -> scope
    choices: dict[str, list[str]]  # contest -> choice ids, in registry order (nomor_urut, id)

    @classmethod
    async def read(cls, db: asyncpg.Connection) -> Registry:
        tps = [r["code"] for r in await db.fetch("SELECT code FROM registry.tps ORDER BY code")]
        scope = {r["id"]: r["scope"] for r in await db.fetch("SELECT id, scope FROM registry.contest")}
        choices: dict[str, list[str]] = {c: [] for c in scope}
        for r in await db.fetch("SELECT contest, id FROM registry.choice ORDER BY contest, nomor_urut, id"):
            choices[r["contest"]].append(r["id"])
        return cls(tps, scope, choices)

    def held(self, contest: str) -> list[str]:
        return [t for t in self.tps if t.startswith(self.scope[contest])]


def totals_for(tps: str, contest: str, version: int, choices: list[str], variant: int = 0) -> aggregate_pb2.Totals:
    rng = random.Random(f"{tps}:{contest}:{version}:{variant}")
    # What one TPS can count (aggregate refuses more): up to 40 per choice, about 200 over many choices.
    votes = {c: rng.randint(0, min(40, max(1, 200 // len(choices)))) for c in choices}
    valid = sum(votes.values())
    invalid = rng.randint(0, 9)
    return aggregate_pb2.Totals(
        votes=votes,
        suara_sah=valid,
        suara_tidak_sah=invalid,
        suara_total=valid + invalid,
        dpt=rng.randint(valid + invalid, valid + invalid + 100),
        pengguna=valid + invalid + rng.randint(0, 3),
    )


@dataclass
class Row:
    votes: dict[str, int]
    suara_sah: int = 0
    suara_tidak_sah: int = 0
    suara_total: int = 0
    dpt: int = 0
    pengguna: int = 0
    tps_total: int = 0
    tps_reported: int = 0
    tps_quarantined: int = 0


@dataclass
class Oracle:
    registry: Registry
    current: dict[tuple[str, str], aggregate_pb2.TpsUpdate] = field(default_factory=dict)

    def send(self, update: aggregate_pb2.TpsUpdate) -> str:
        """Remember an update as aggregate should; return the outcome it should get (sent one at a time)."""
        key = (update.tps, update.contest)
        have = self.current.get(key)
        if have is None or update.version > have.version:
            self.current[key] = update
            return "APPLIED"
        return "DUPLICATE" if update.version == have.version else "STALE"

    def rows(self) -> dict[tuple[str, str], Row]:
        """(contest, area) -> the area's expected row, for every area holding a TPS of the contest."""
        rows: dict[tuple[str, str], Row] = {}
        for contest in self.registry.scope:
            choices = self.registry.choices[contest]
            for tps in self.registry.held(contest):
                update = self.current.get((tps, contest))
                for n in PREFIXES:
                    row = rows.setdefault((contest, tps[:n]), Row(dict.fromkeys(choices, 0)))
                    row.tps_total += 1
                    if update is None:
                        continue
                    if update.quarantined:
                        row.tps_quarantined += 1
                        continue
                    row.tps_reported += 1
                    for choice, votes in update.totals.votes.items():
                        row.votes[choice] += votes
                    for name in SCALARS:
                        setattr(row, name, getattr(row, name) + getattr(update.totals, name))
        return rows


async def stored_rows(db: asyncpg.Connection, registry: Registry) -> dict[tuple[str, str], Row]:
    """Every area row aggregate holds, in the oracle's shape."""
    return {
        (r["contest"], r["area"]): Row(
            dict(zip(registry.choices[r["contest"]], r["votes"], strict=True)),
            suara_sah=r["suara_sah"],
            suara_tidak_sah=r["suara_tidak_sah"],
            suara_total=r["suara_total"],
            dpt=r["dpt"],
            pengguna=r["pengguna"],
            tps_total=r["tps_total"],
            tps_reported=r["tps_reported"],
            tps_quarantined=r["tps_quarantined"],
        )
        for r in await db.fetch("SELECT * FROM aggregate.area_total")
    }


async def stored_versions(db: asyncpg.Connection) -> dict[tuple[str, str], tuple[int, bool]]:
    rows = await db.fetch("SELECT tps, contest, version, quarantined FROM aggregate.tps_result")
    return {(r["tps"], r["contest"]): (r["version"], r["quarantined"]) for r in rows}


def expected_versions(oracle: Oracle) -> dict[tuple[str, str], tuple[int, bool]]:
    return {k: (u.version, u.quarantined) for k, u in oracle.current.items()}
