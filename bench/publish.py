"""Publish: a full rebuild against writing the same bytes with plain file writes, and one incremental
cycle after 1,000 changed TPS.

Runs on `make bench`'s database at scale 0.05, where it first has every TPS of each contest measured
report a form (as bench.rollup does; the ingest bench leaves aggregate empty), with a real aggregate
over gRPC and the site on this machine's disk:

- `publish.ratio_vs_raw_write`: a full rebuild (GetAreas, rendering, gzip, temp file + rename per
  file) over writing exactly the bytes it wrote (its files and their .gz) with open/write into an
  empty directory. The target is at most 2.
- `publish.incremental_s`: one cycle after a batch of 1,000 changed TPS. The target is at most 2 s.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from bench.rollup import BATCH, _update, report_every_tps
from services.aggregate.catalog import Catalog
from services.aggregate.rollup import Rollup
from services.aggregate.server import AggregateApp
from services.publish.cycle import Publisher
from services.publish.sinks.local import LocalSink
from suara.client.aggregate_stub import aggregate_stub
from suara.registry.catalog import fetch_contests
from suara.runtime.auth.client import ServiceAuthClientInterceptor
from suara.runtime.auth.store import issue_service_credential
from suara.runtime.database import Database, connect
from suara.runtime.settings import AggregateSettings, LogSettings, Settings, TlsSettings
from suara.runtime.wire import MESSAGE_LIMITS


def _raw_write(files: list[tuple[str, bytes]], root: Path) -> float:
    """The baseline: the same bytes, plain open/write, directories made as needed.

    os calls, not pathlib: the baseline must be the cheapest plain write, not one with extra overhead.
    """
    made: set[str] = set()
    started = time.perf_counter()
    for rel, body in files:
        parent = os.path.dirname(rel)  # noqa: PTH120
        if parent not in made:
            os.makedirs(root / parent, exist_ok=True)  # noqa: PTH103
            made.add(parent)
        with open(root / rel, "wb") as f:  # noqa: PTH123
            f.write(body)
    return time.perf_counter() - started


def _read_tree(root: Path) -> list[tuple[str, bytes]]:
    return [(str(p.relative_to(root)), p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()]


async def run(url: str, *, contests: tuple[str, ...]) -> dict[str, Any]:
    async with connect(url) as conn:
        reader = await issue_service_credential(conn, "bench-publish", "reader")
    aggregate = await AggregateApp.create(
        # Plaintext (SUARA_INSECURE): what this measures is publish's cycle, not the transport.
        Settings(
            aggregate=AggregateSettings(port=0, internal_port=0),
            log=LogSettings(level="warning"),
            tls=TlsSettings(insecure=True),
        ),
        url,
    )
    await aggregate.start()
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{aggregate.port}",
        interceptors=[ServiceAuthClientInterceptor(reader)],
        options=list(MESSAGE_LIMITS),
    )
    pool = await Database.open(url, size=4, application="suara-bench-publish")
    results: dict[str, Any] = {}
    try:
        wanted = {k: v for k, v in (await fetch_contests(pool.pool)).items() if k in contests}
        catalog = await Catalog.load(pool)
        rollup = Rollup(pool)
        for contest_id in wanted:
            await report_every_tps(pool, rollup, catalog, contest_id, random.Random(1))
        # On disk (/tmp here is the same disk, not tmpfs): that is what a rebuild really costs.
        with tempfile.TemporaryDirectory(prefix="suara-bench-site-") as tmp:
            site = Path(tmp) / "site"
            publisher = Publisher(pool, LocalSink(site), aggregate_stub(channel), None, wanted)
            full = await publisher.cycle(full=True)
            assert full is not None
            tree = _read_tree(site)
            raw_s = _raw_write(tree, Path(tmp) / "raw")
            results["publish_files"] = len(tree)
            results["publish_bytes"] = sum(len(b) for _, b in tree)
            results["publish.rebuild_s"] = round(full.seconds, 2)
            results["publish.raw_write_s"] = round(raw_s, 2)
            results["publish.ratio_vs_raw_write"] = round(full.seconds / raw_s, 2)

            contest = "ppwp"
            choices = catalog.choice_ids(contest)
            async with pool.acquire() as conn:
                held = [r["tps"] for r in await conn.fetch(
                    "SELECT tps, version FROM aggregate.tps_result WHERE contest = $1 ORDER BY tps", contest
                )]  # fmt: skip
                top = await conn.fetchval("SELECT max(version) FROM aggregate.tps_result WHERE contest = $1", contest)
            rng = random.Random(7)
            changed = rng.sample(held, min(BATCH, len(held)))
            assert changed, "no TPS holds a result: nothing to change"
            await rollup.apply_leaves([_update(t, contest, choices, top + 1, rng) for t in changed])
            started = time.perf_counter()
            incremental = await publisher.cycle()
            assert incremental is not None
            results["publish.incremental_s"] = round(time.perf_counter() - started, 3)
            results["publish_incremental_files"] = incremental.files
    finally:
        await pool.close()
        await channel.close()
        await aggregate.stop(0.5)
    return results
