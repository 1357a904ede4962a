"""Applying a batch: write what is newer, then recompute only the parents of what changed, level by level.

One transaction per batch. It locks the head row first, so appliers (two
relays, a relay and a federated feed) run one at a time; in READ COMMITTED
every later statement then reads the leaves as the previous applier left
them, and no update is lost. A batch that changes anything takes the next
global change sequence under that lock, so sequences commit in order.

A desa is recomputed from its TPS rows, every level above from its child
area rows: the cost follows the batch, never the size of the country, and no
hot national row is written more than once per batch.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeAlias

import asyncpg
import structlog

from services.aggregate.errors import InvalidRequest
from services.aggregate.queries import QUERIES
from services.aggregate.updates import AreaUpdate, LeafUpdate
from suara.runtime.errors import FieldProblem
from suara.v1 import aggregate_pb2

log = structlog.stdlib.get_logger("suara.aggregate.rollup")

Outcome: TypeAlias = aggregate_pb2.UpdateOutcome.ValueType
APPLIED, DUPLICATE, STALE = aggregate_pb2.APPLIED, aggregate_pb2.DUPLICATE_UPDATE, aggregate_pb2.STALE

# Code length of each area level; 0 is nasional (''), 4 desa.
LEVEL_LENGTH = {0: 0, 1: 2, 2: 4, 3: 6, 4: 10}
LEVEL_OF_LENGTH = {n: level for level, n in LEVEL_LENGTH.items()}

Target = tuple[str, str]  # (contest, area)


@dataclass(frozen=True)
class Applied:
    outcomes: list[Outcome]
    sequence: int  # the change sequence after the batch


def decide(
    keys: Sequence[tuple[Hashable, int]], stored: dict[Hashable, int]
) -> tuple[list[Outcome], dict[Hashable, int]]:
    """Outcome of each (key, version) in order, and the index of the update that wins each key.

    Against what was stored and what came earlier in the same batch: a higher
    version applies, the same version is a duplicate, a lower one is stale.
    """
    current = dict(stored)
    outcomes: list[Outcome] = []
    winners: dict[Hashable, int] = {}
    for index, (key, version) in enumerate(keys):
        have = current.get(key)
        if have is None or version > have:
            current[key] = version
            winners[key] = index
            outcomes.append(APPLIED)
        else:
            outcomes.append(DUPLICATE if version == have else STALE)
    return outcomes, winners


def _columns(targets: set[Target]) -> tuple[list[str], list[str]]:
    ordered = sorted(targets)
    return [t[0] for t in ordered], [t[1] for t in ordered]


class Rollup:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def seed(self) -> int:
        """Area rows with tps_total from the registry, once per registry load; returns the sequence."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(QUERIES.custom_plans)
            head = await conn.fetchrow(QUERIES.lock_head)
            load = await conn.fetchval(QUERIES.registry_load)
            sequence: int = head["sequence"]
            if head["registry_load"] == load:
                return sequence
            seeded = await conn.fetchval(QUERIES.seed_areas, sequence + 1, datetime.now(UTC))
            if seeded:
                sequence += 1
            await conn.execute(QUERIES.set_head, sequence, load)
            log.info("areas_seeded", registry_load=load, rows=seeded, sequence=sequence)
            return sequence

    async def apply_leaves(self, updates: list[LeafUpdate]) -> Applied:
        started = time.perf_counter()
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(QUERIES.custom_plans)
            head = await conn.fetchrow(QUERIES.lock_head)  # before any read: see the comment at the top
            keys = list({u.key for u in updates})
            rows = await conn.fetch(QUERIES.current_versions, [k[0] for k in keys], [k[1] for k in keys])
            stored: dict[Hashable, int] = {(r["tps"], r["contest"]): r["version"] for r in rows}
            outcomes, winners = decide([(u.key, u.version) for u in updates], stored)
            sequence: int = head["sequence"]
            if not winners:
                return Applied(outcomes, sequence)
            sequence += 1
            now = datetime.now(UTC)
            won = [updates[i] for i in winners.values()]
            desas = await conn.fetch(
                QUERIES.upsert_leaves,
                [u.tps for u in won],
                [u.contest for u in won],
                [u.version for u in won],
                [u.quarantined for u in won],
                [",".join(u.failed_checks) for u in won],
                [u.counts.array_literal() for u in won],
                [u.counts.suara_sah for u in won],
                [u.counts.suara_tidak_sah for u in won],
                [u.counts.suara_total for u in won],
                [u.counts.dpt for u in won],
                [u.counts.pengguna for u in won],
                sequence,
                now,
                [u.administrasi or None for u in won],
                [",".join(u.photos) for u in won],
            )
            areas = await self._roll_up(conn, {4: {(r["contest"], r["area"]) for r in desas}}, sequence, now)
            await conn.execute(QUERIES.set_head, sequence, None)
        log.debug(
            "batch_applied",
            updates=len(updates),
            applied=len(won),
            duplicate=outcomes.count(DUPLICATE),
            stale=outcomes.count(STALE),
            areas_changed=areas,
            sequence=sequence,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return Applied(outcomes, sequence)

    async def apply_feed(self, source: str, updates: list[AreaUpdate]) -> Applied:
        started = time.perf_counter()
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(QUERIES.custom_plans)
            head = await conn.fetchrow(QUERIES.lock_head)
            keys = list({u.key for u in updates})
            known = await conn.fetch(QUERIES.known_areas, [k[1] for k in keys], [k[0] for k in keys])
            have_rows = {(r["area"], r["contest"]) for r in known}
            problems = [
                FieldProblem(f"updates[{i}].area", f"contest {u.contest!r} has no TPS in area {u.area!r} here")
                for i, u in enumerate(updates)
                if u.key not in have_rows
            ]
            if problems:
                raise InvalidRequest(problems)
            rows = await conn.fetch(QUERIES.current_feed_versions, [k[0] for k in keys], [k[1] for k in keys])
            stored: dict[Hashable, int] = {(r["area"], r["contest"]): r["version"] for r in rows}
            outcomes, winners = decide([(u.key, u.version) for u in updates], stored)
            sequence: int = head["sequence"]
            if not winners:
                return Applied(outcomes, sequence)
            sequence += 1
            now = datetime.now(UTC)
            won = [updates[i] for i in winners.values()]
            fed = await conn.fetch(
                QUERIES.upsert_feed,
                [u.area for u in won],
                [u.contest for u in won],
                [u.version for u in won],
                [u.counts.array_literal() for u in won],
                [u.counts.suara_sah for u in won],
                [u.counts.suara_tidak_sah for u in won],
                [u.counts.suara_total for u in won],
                [u.counts.dpt for u in won],
                [u.counts.pengguna for u in won],
                [u.tps_total for u in won],
                [u.tps_reported for u in won],
                [u.tps_quarantined for u in won],
                source,
                now,
            )
            targets: dict[int, set[Target]] = {}
            for r in fed:
                targets.setdefault(LEVEL_OF_LENGTH[len(r["area"])], set()).add((r["contest"], r["area"]))
            areas = await self._roll_up(conn, targets, sequence, now)
            if areas:
                await conn.execute(QUERIES.set_head, sequence, None)
            else:
                sequence -= 1  # a new version with the same totals: nothing was stamped, the sequence is not taken
        log.debug(
            "feed_applied",
            source=source,
            updates=len(updates),
            applied=len(won),
            areas_changed=areas,
            sequence=sequence,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return Applied(outcomes, sequence)

    @staticmethod
    async def _roll_up(conn: asyncpg.Connection, targets: dict[int, set[Target]], sequence: int, now: datetime) -> int:
        """Recompute the targets bottom-up; a changed row makes its parent a target. Returns rows changed."""
        changed_total = 0
        carried: set[Target] = set()
        for level in (4, 3, 2, 1, 0):
            todo = targets.get(level, set()) | carried
            carried = set()
            if not todo:
                continue
            query = QUERIES.recompute_desa if level == 4 else QUERIES.recompute_upper
            changed = await conn.fetch(query, *_columns(todo), sequence, now)
            changed_total += len(changed)
            if level > 0:
                carried = {(r["contest"], r["area"][: LEVEL_LENGTH[level - 1]]) for r in changed}
        return changed_total
