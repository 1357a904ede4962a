"""Applying a batch: write what is newer, then recompute only the parents of what changed, level by level.

One transaction per batch. It locks the head row first, so appliers (two
relays, a relay and a federated feed) run one at a time; in READ COMMITTED
every later statement then reads the leaves as the previous applier left
them, and no update is lost. A batch that changes anything takes the next
global change sequence under that lock, so sequences commit in order.

A batch of TPS updates adds, to each area above a changed TPS, the difference
between the TPS's new and old contribution: one statement, one row written per
changed area, and no hot national row written more than once per batch. The
cost follows the batch, never the size of the country or of an area's children
(recomputing every parent from its children instead sorts whole levels on every
batch; `python -m bench.rollup` measures the two). Where
another instance feeds a subtree (federation), the fed areas take the feed's
values, so parents are recomputed from their children, level by level.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeAlias, TypeVar

import asyncpg
import structlog

from services.aggregate.queries import QUERIES
from services.aggregate.updates import AreaUpdate, LeafUpdate
from suara.election.codes import DESA, DESA_LENGTH, LENGTHS
from suara.runtime.database import Database
from suara.runtime.errors import FieldProblem
from suara.v1 import aggregate_pb2

log = structlog.stdlib.get_logger("suara.aggregate.rollup")

Outcome: TypeAlias = aggregate_pb2.UpdateOutcome.ValueType
APPLIED, DUPLICATE, STALE, REFUSED = (
    aggregate_pb2.UPDATE_OUTCOME_APPLIED,
    aggregate_pb2.UPDATE_OUTCOME_DUPLICATE,
    aggregate_pb2.UPDATE_OUTCOME_STALE,
    aggregate_pb2.UPDATE_OUTCOME_REFUSED,
)

# Code length of each area level with rows of its own; 0 is nasional (''), DESA the lowest.
LEVEL_LENGTH = {0: 0, **dict(enumerate(LENGTHS[:DESA], start=1))}
LEVEL_OF_LENGTH = {n: level for level, n in LEVEL_LENGTH.items()}

Target = tuple[str, str]  # (contest, area)
U = TypeVar("U", LeafUpdate, AreaUpdate)


@dataclass(frozen=True)
class Applied:
    outcomes: list[Outcome]  # one per update given, REFUSED for those in `refused`
    sequence: int  # the change sequence after the batch
    refused: dict[int, list[FieldProblem]] = field(default_factory=dict)  # by position in the updates given


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


def _decided(updates: Sequence[U], stored: dict[Hashable, int]) -> tuple[list[Outcome], list[U]]:
    """`decide` for whole updates: each one's outcome, and the updates that win their key."""
    outcomes, winners = decide([(u.key, u.version) for u in updates], stored)
    return outcomes, [updates[i] for i in winners.values()]


def _unknown_here(updates: Sequence[AreaUpdate], tps_here: dict[tuple[str, str], int]) -> dict[int, list[FieldProblem]]:
    """Fed updates this instance has no such area for, or fewer TPS in it than the feed claims."""
    refused: dict[int, list[FieldProblem]] = {}
    for i, u in enumerate(updates):
        have = tps_here.get(u.key)
        if have is None:
            refused[i] = [FieldProblem("area", f"contest {u.contest!r} has no TPS in area {u.area!r} here")]
        elif u.tps_total > have:
            refused[i] = [FieldProblem("tps_total", f"{u.tps_total} TPS, where this registry has {have}")]
    return refused


def _columns(targets: set[Target]) -> tuple[list[str], list[str]]:
    ordered = sorted(targets)
    return [t[0] for t in ordered], [t[1] for t in ordered]


class Rollup:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def seed(self) -> int:
        """Area rows with tps_total from the registry, once per registry load; returns the sequence."""
        async with self._db.acquire() as conn, conn.transaction():
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

    @contextlib.asynccontextmanager
    async def _holding_head(self) -> AsyncIterator[tuple[asyncpg.Connection, int]]:
        """A transaction that holds the head row, taken before any read (see the comment at the top):
        the connection, and the head's sequence."""
        async with self._db.acquire() as conn, conn.transaction():
            await conn.execute(QUERIES.custom_plans)
            head = await conn.fetchrow(QUERIES.lock_head)
            yield conn, head["sequence"]

    async def apply_leaves(self, updates: list[LeafUpdate], traceparent: str | None = None) -> Applied:
        """`traceparent`: the context of the traced apply, kept with the sequence it takes (None: nothing kept)."""
        started = time.perf_counter()
        async with self._holding_head() as (conn, sequence):
            keys = list({u.key for u in updates})
            rows = await conn.fetch(QUERIES.current_versions, [k[0] for k in keys], [k[1] for k in keys])
            before = {(r["tps"], r["contest"]): r for r in rows}
            stored: dict[Hashable, int] = {key: r["version"] for key, r in before.items()}
            outcomes, won = _decided(updates, stored)
            if not won:
                return Applied(outcomes, sequence)
            sequence, now = sequence + 1, datetime.now(UTC)
            applied = await conn.fetch(
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
            written = {(r["tps"], r["contest"]) for r in applied}
            differences = None if await conn.fetchval(QUERIES.any_feed) else _differences(won, written, before)
            if differences is None:
                desas = {(contest, tps[:DESA_LENGTH]) for tps, contest in written}
                areas = await self._roll_up(conn, {DESA: desas}, sequence, now)
            else:
                areas = await self._add(conn, differences, sequence, now)
            await conn.execute(QUERIES.set_head, sequence, None)
            if traceparent is not None:
                await conn.execute(QUERIES.keep_trace, sequence, traceparent)
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
        async with self._holding_head() as (conn, sequence):
            keys = list({u.key for u in updates})
            known = await conn.fetch(QUERIES.known_areas, [k[1] for k in keys], [k[0] for k in keys])
            tps_here = {(r["area"], r["contest"]): r["tps_total"] for r in known}
            refused = _unknown_here(updates, tps_here)
            fit = [u for i, u in enumerate(updates) if i not in refused]
            rows = await conn.fetch(QUERIES.current_feed_versions, [k[0] for k in keys], [k[1] for k in keys])
            stored: dict[Hashable, int] = {(r["area"], r["contest"]): r["version"] for r in rows}
            fit_outcomes, won = _decided(fit, stored)
            it = iter(fit_outcomes)
            outcomes = [REFUSED if i in refused else next(it) for i in range(len(updates))]
            if not won:
                return Applied(outcomes, sequence, refused)
            sequence, now = sequence + 1, datetime.now(UTC)
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
            refused=len(refused),
            areas_changed=areas,
            sequence=sequence,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return Applied(outcomes, sequence, refused)

    @staticmethod
    async def _add(conn: asyncpg.Connection, differences: dict[Target, list[int]], sequence: int, now: datetime) -> int:
        """Add each area's difference to its row; returns rows changed (those with a difference at all)."""
        if not differences:
            return 0
        targets = sorted(differences)
        vectors = [differences[t] for t in targets]
        changed: int = await conn.fetchval(
            QUERIES.add_to_areas,
            [t[0] for t in targets],
            [t[1] for t in targets],
            ["{" + ",".join(map(str, v[:-_SCALARS])) + "}" for v in vectors],
            *([v[i] for v in vectors] for i in range(-_SCALARS, 0)),
            sequence,
            now,
        )
        return changed

    @staticmethod
    async def _roll_up(conn: asyncpg.Connection, targets: dict[int, set[Target]], sequence: int, now: datetime) -> int:
        """Recompute the targets bottom-up; a changed row makes its parent a target. Returns rows changed."""
        changed_total = 0
        carried: set[Target] = set()
        for level in range(DESA, -1, -1):
            todo = targets.get(level, set()) | carried
            carried = set()
            if not todo:
                continue
            changed = await conn.fetch(QUERIES.recompute_areas, *_columns(todo), sequence, now)
            changed_total += len(changed)
            if level > 0:
                carried = {(r["contest"], r["area"][: LEVEL_LENGTH[level - 1]]) for r in changed}
        return changed_total


# After the votes, a contribution carries suara_sah, suara_tidak_sah, suara_total, dpt, pengguna and
# the TPS counts reported and quarantined (add_to_areas takes them in this order).
_SCALARS = 7
_ANCESTORS = tuple(LEVEL_LENGTH[level] for level in range(DESA, -1, -1))  # desa up to nasional ('')


def _contribution(quarantined: bool, votes: Sequence[int], sums: Sequence[int]) -> list[int]:
    """What one TPS adds to every area above it: a quarantined form adds nothing but its flag."""
    if quarantined:
        return [0] * (len(votes) + 6) + [1]
    return [*votes, *sums, 1, 0]


def _differences(
    won: Sequence[LeafUpdate], written: set[tuple[str, str]], before: dict[tuple[str, str], asyncpg.Record]
) -> dict[Target, list[int]] | None:
    """Per ancestor area, what the batch changes in its totals; None when it cannot be told by difference.

    Areas whose differences cancel out (one TPS up by what another went down) are left out, as the
    recompute would leave them unwritten.
    """
    out: dict[Target, list[int]] = {}
    for u in won:
        if u.key not in written:
            continue  # not applied after all: nothing of it counts
        c = u.counts
        new = _contribution(u.quarantined, c.votes, (c.suara_sah, c.suara_tidak_sah, c.suara_total, c.dpt, c.pengguna))
        old_row = before.get(u.key)
        if old_row is None:
            old = [0] * len(new)
        else:
            old_sums = [old_row[k] for k in ("suara_sah", "suara_tidak_sah", "suara_total", "dpt", "pengguna")]
            old = _contribution(old_row["quarantined"], old_row["votes"], old_sums)
        if len(old) != len(new):
            return None  # the contest's choices changed width: only a recompute from the children is right
        diff = [n - o for n, o in zip(new, old, strict=True)]
        if not any(diff):
            continue
        for length in _ANCESTORS:
            target = (u.contest, u.tps[:length])
            acc = out.get(target)
            if acc is None:
                out[target] = list(diff)
            else:
                for i, d in enumerate(diff):
                    acc[i] += d
    return {t: v for t, v in out.items() if any(v)}
