"""`make bench`: run the benchmarks, print a table, write bench/results/latest.json."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

from bench import end_to_end, ingest, publish, replicas, rollup
from cli.db import migrate_url
from cli.embedded import EmbeddedPostgres
from suara.registry.loader import load_registry
from suara.runtime.logging import configure_logging

RESULTS = Path(__file__).parent / "results"


async def _prepare(url: str, scale: float) -> None:
    await migrate_url(url)
    conn = await asyncpg.connect(url)
    try:
        await load_registry(conn, synthetic_scale=scale, seed=1)
    finally:
        await conn.close()


async def _create_database(url: str, name: str) -> None:
    """A fresh database on the same server: roll-up at its own scale beside the others' 0.05."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def main() -> int:
    configure_logging("warning", "console", service="bench")
    quick = os.environ.get("BENCH_QUICK") == "1"
    forms = 2000 if quick else 10000
    with tempfile.TemporaryDirectory(prefix="suara-bench-") as tmp:
        if os.environ.get("DATABASE_URL"):
            sys.exit("bench uses its own embedded PostgreSQL (it creates and drops data freely); unset DATABASE_URL")
        server = EmbeddedPostgres(Path(tmp) / "pgdata")
        url = server.start()
        try:
            print("preparing: migrate, registry at scale 0.05 …", file=sys.stderr)
            asyncio.run(_prepare(url, 0.05))
            print(
                f"ingest: {forms:,} unary Submit at each of {len(ingest.LEVELS)} concurrency levels, "
                f"{forms:,} forms in SubmitBatch …",
                file=sys.stderr,
            )
            results = asyncio.run(ingest.run(url, forms=forms))
            print(
                f"replicas: {forms:,} Submit through Envoy to {', '.join(map(str, replicas.HOSTS))} tally processes "
                f"at each of {len(ingest.LEVELS)} concurrency levels, the chain head sampled, and one tally on "
                "PostgreSQL under Patroni with two synchronous standbys …",
                file=sys.stderr,
            )
            asyncio.run(_create_database(url, "replicas"))  # its own chain head and TPS versions
            replicas_url = server.url("replicas")
            asyncio.run(_prepare(replicas_url, 0.05))
            results.update(asyncio.run(replicas.run_with_sync_standbys(replicas_url, Path(tmp), forms=forms)))
            contests = ("ppwp",) if quick else rollup.CONTESTS
            rollup_scale = 0.05 if quick else 1.0  # the target is about the whole country
            print(
                f"rollup: batches of {rollup.BATCH:,} changed TPS vs full recompute ({', '.join(contests)}, "
                f"scale {rollup_scale}) …",
                file=sys.stderr,
            )
            asyncio.run(_create_database(url, "rollup"))
            rollup_url = server.url("rollup")
            asyncio.run(_prepare(rollup_url, rollup_scale))
            results["rollup_scale"] = rollup_scale
            results.update(asyncio.run(rollup.run(rollup_url, contests=contests)))
            print(f"publish: full rebuild vs raw writes, one cycle after {rollup.BATCH:,} changes …", file=sys.stderr)
            results.update(asyncio.run(publish.run(url, contests=contests)))
        finally:
            server.stop("immediate")
    scale = 0.01 if quick else 1.0
    print(f"end to end: suara up at scale {scale} + loadtest (ppwp, standard faults) …", file=sys.stderr)
    results.update(asyncio.run(end_to_end.run(scale)))
    report = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quick": quick, **results}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key.ljust(width)}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
