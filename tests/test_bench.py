"""The benchmarks still run: `make bench` is not part of the suite (it takes an hour at full size), so
these run its publish and roll-up parts on a test database's small registry. What they check is that
each measured what it says (the work was done), not how fast."""

from __future__ import annotations

import asyncpg

from bench import publish, rollup


async def test_the_publish_bench_rebuilds_then_publishes_one_cycle_of_changed_tps(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        tps = await conn.fetchval("SELECT count(*) FROM registry.tps")
    finally:
        await conn.close()
    results = await publish.run(db_url, contests=("ppwp",))
    changed = min(rollup.BATCH, tps)  # ppwp is held at every TPS
    assert results["publish_incremental_files"] >= 2 * changed  # each changed TPS file and its .gz, at least
    assert results["publish_files"] > 2 * tps  # every TPS file and its .gz, and the areas above them
    assert results["publish.ratio_vs_raw_write"] > 0


async def test_the_rollup_bench_reports_every_tps_and_times_both_paths(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        tps = await conn.fetchval("SELECT count(*) FROM registry.tps")
        results = await rollup.run(db_url, contests=("ppwp",))
        reported = await conn.fetchval("SELECT count(*) FROM aggregate.tps_result WHERE contest = 'ppwp'")
        national = await conn.fetchval(
            "SELECT tps_reported FROM aggregate.area_total WHERE contest = 'ppwp' AND area = ''"
        )
    finally:
        await conn.close()
    assert results["rollup_tps"] == tps
    assert reported == tps and national == tps
    assert results["rollup_ppwp_batch_1000_ms"] > 0 and results["rollup_ppwp_full_recompute_ms"] > 0
    assert results["rollup.ratio_vs_full_recompute"] == results["rollup_ppwp_ratio"]
