"""Roll-up: one batch of 1,000 changed TPS against a full GROUP BY recompute of every level.

On a registry with every TPS reported (scale 1.0 in `make bench`, 0.05 with BENCH_QUICK=1), applying
a batch recomputes only the parents of what changed; the baseline recomputes
every area row of every level from all the leaves, in the same database. The
ratio (full / batch) is what matters: the design's target is at least 20.

`python -m bench.rollup` runs it on its own embedded PostgreSQL.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from services.aggregate.catalog import Catalog
from services.aggregate.rollup import Rollup
from services.aggregate.updates import Counts, LeafUpdate
from suara.runtime.database import Database

BATCH = 1000
LOAD_BATCH = 5000
CONTESTS = ("ppwp", "pdpr")

# The baseline: every area row of every level recomputed from all the leaves at once.
FULL_RECOMPUTE = """
WITH leaves AS (
    SELECT contest, tps, quarantined, votes, suara_sah, suara_tidak_sah, suara_total, dpt, pengguna
    FROM aggregate.tps_result WHERE contest = $1
), per_area AS (
    SELECT contest, left(tps, n) AS area,
           sum(suara_sah) FILTER (WHERE NOT quarantined) AS suara_sah,
           sum(suara_tidak_sah) FILTER (WHERE NOT quarantined) AS suara_tidak_sah,
           sum(suara_total) FILTER (WHERE NOT quarantined) AS suara_total,
           sum(dpt) FILTER (WHERE NOT quarantined) AS dpt,
           sum(pengguna) FILTER (WHERE NOT quarantined) AS pengguna,
           count(*) FILTER (WHERE NOT quarantined) AS tps_reported,
           count(*) FILTER (WHERE quarantined) AS tps_quarantined
    FROM leaves CROSS JOIN unnest(ARRAY[0, 2, 4, 6, 10]) AS n
    GROUP BY 1, 2
), per_choice AS (
    SELECT contest, left(tps, n) AS area, i, sum(CASE WHEN quarantined THEN 0 ELSE v END)::bigint AS v
    FROM leaves CROSS JOIN unnest(votes) WITH ORDINALITY AS e (v, i) CROSS JOIN unnest(ARRAY[0, 2, 4, 6, 10]) AS n
    GROUP BY 1, 2, 3
), vectors AS (
    SELECT contest, area, array_agg(v ORDER BY i) AS votes FROM per_choice GROUP BY 1, 2
)
UPDATE aggregate.area_total a
SET votes = v.votes, suara_sah = p.suara_sah, suara_tidak_sah = p.suara_tidak_sah, suara_total = p.suara_total,
    dpt = p.dpt, pengguna = p.pengguna, tps_reported = p.tps_reported, tps_quarantined = p.tps_quarantined
FROM per_area p JOIN vectors v USING (contest, area)
WHERE a.contest = p.contest AND a.area = p.area
"""


def _update(tps: str, contest: str, choices: list[str], version: int, rng: random.Random) -> LeafUpdate:
    votes = tuple(rng.randint(0, 300 // len(choices) + 1) for _ in choices)
    valid = sum(votes)
    invalid = rng.randint(0, 10)
    return LeafUpdate(
        tps, contest, version, False, (), Counts(votes, valid, invalid, valid + invalid, 300, valid + invalid)
    )


async def report_every_tps(
    pool: Database, rollup: Rollup, catalog: Catalog, contest: str, rng: random.Random
) -> list[str]:
    """Every TPS where `contest` is held reports a form (version 1); returns those TPS."""
    await rollup.seed()
    choices = catalog.choice_ids(contest)
    all_tps = [r["code"] for r in await pool.fetch("SELECT code FROM registry.tps ORDER BY code")]
    held = [t for t in all_tps if catalog.contests[contest].held_at(t)]
    for i in range(0, len(held), LOAD_BATCH):
        await rollup.apply_leaves([_update(t, contest, choices, 1, rng) for t in held[i : i + LOAD_BATCH]])
    # As autovacuum would soon: the plans must hold with real statistics (see recompute_areas).
    await pool.execute("ANALYZE aggregate.tps_result; ANALYZE aggregate.area_total")
    return held


async def _timed_full(conn: asyncpg.Connection, contest: str) -> float:
    started = time.perf_counter()
    tr = conn.transaction()
    await tr.start()
    try:
        await conn.execute(FULL_RECOMPUTE, contest)
    finally:
        await tr.rollback()  # a measurement only: the batch path keeps the rows right
    return time.perf_counter() - started


async def run(url: str, contests: tuple[str, ...] = CONTESTS) -> dict[str, Any]:
    """`url`: a migrated database with a registry at the scale to measure."""
    pool = await Database.open(url, size=2, application="suara-bench-rollup")
    rng = random.Random(1)
    results: dict[str, Any] = {}
    try:
        catalog = await Catalog.load(pool)
        rollup = Rollup(pool)
        results["rollup_tps"] = await pool.fetchval("SELECT count(*) FROM registry.tps")
        for contest in contests:
            choices = catalog.choice_ids(contest)
            held = await report_every_tps(pool, rollup, catalog, contest, rng)
            batch_s, full_s = [], []
            for round_ in range(3):
                changed = rng.sample(held, min(BATCH, len(held)))
                updates = [_update(t, contest, choices, 2 + round_, rng) for t in changed]
                started = time.perf_counter()
                await rollup.apply_leaves(updates)
                batch_s.append(time.perf_counter() - started)
                async with pool.acquire() as conn:
                    full_s.append(await _timed_full(conn, contest))
            batch, full = statistics.median(batch_s), statistics.median(full_s)
            results[f"rollup_{contest}_batch_{BATCH}_ms"] = round(batch * 1000, 1)
            results[f"rollup_{contest}_full_recompute_ms"] = round(full * 1000, 1)
            results[f"rollup_{contest}_ratio"] = round(full / batch, 1)
        # The target's name: the least favourable contest's ratio.
        results["rollup.ratio_vs_full_recompute"] = min(results[f"rollup_{c}_ratio"] for c in contests)
    finally:
        await pool.close()
    return results


def main(argv: list[str]) -> int:
    """`python -m bench.rollup [SCALE [CONTEST,…]]`, default 0.05 and ppwp,pdpr."""
    from cli.db import migrate_url
    from cli.embedded import EmbeddedPostgres
    from suara.registry.loader import load_registry

    async def prepare(url: str) -> None:
        await migrate_url(url)
        conn = await asyncpg.connect(url)
        try:
            await load_registry(conn, synthetic_scale=scale, seed=1)
        finally:
            await conn.close()

    scale = float(argv[0]) if argv else 0.05
    contests = tuple(argv[1].split(",")) if len(argv) > 1 else CONTESTS
    with tempfile.TemporaryDirectory(prefix="suara-bench-rollup-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pgdata")
        url = server.start()
        try:
            asyncio.run(prepare(url))
            results = asyncio.run(run(url, contests))
        finally:
            server.stop("immediate")
    for key, value in results.items():
        print(f"{key}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
