"""publish's metrics (docs/metrics.md) against the database and aggregate they describe."""

from __future__ import annotations

import random
import time
from pathlib import Path

from prometheus_client import REGISTRY

from services.publish.server import PublishApp
from tests.publish.test_app import _aggregate_head, _published, _settings, running
from tests.support.publish import Pipeline


def value(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_lag_snapshot_age_and_cycles_follow_what_is_published(
    pipeline: Pipeline, site: Path, tmp_path: Path
) -> None:
    app = await PublishApp.create(await _settings(pipeline, site, tmp_path), pipeline.db_url)
    await pipeline.random_night(random.Random(5), 12)
    await pipeline.delivered()
    head = await _aggregate_head(pipeline)
    assert head > 0

    # Not started: nothing published, so the site trails aggregate by its whole head.
    await app.sample_metrics()
    assert value("suara_publish_lag_sequences") == head
    assert value("suara_publish_is_leader") == 0
    seen = time.time()

    cycles = value("suara_publish_cycle_duration_seconds_count")
    files = value("suara_publish_files_written_total")
    async with running(app):
        await _published(pipeline, app)
        assert app.last is not None
        await app.sample_metrics()
        assert value("suara_publish_is_leader") == 1
        assert value("suara_publish_lag_sequences") == 0 and value("suara_publish_lag_seconds") == 0
        assert value("suara_publish_cycle_duration_seconds_count") > cycles
        assert value("suara_publish_files_written_total") - files >= app.last.files > 0
        published_at = (await pipeline.db.fetchval("SELECT updated_at FROM publish.cursor")).timestamp()
        assert 0 <= value("suara_publish_snapshot_age_seconds") <= time.time() - published_at
        assert seen <= value("suara_publish_last_success_timestamp_seconds") <= time.time()

    # Changes aggregate has and the site does not show yet (no publisher runs): counted, aged from when
    # publish first saw them, by a standby's look.
    standby = await PublishApp.create(await _settings(pipeline, site, tmp_path), pipeline.db_url)
    try:
        await pipeline.random_night(random.Random(6), 4)
        await pipeline.delivered()
        before = time.time()
        await standby.sample_metrics()
        published = int(await pipeline.db.fetchval("SELECT sequence FROM publish.cursor"))
        behind = await _aggregate_head(pipeline) - published
        assert behind > 0 and value("suara_publish_lag_sequences") == behind
        assert value("suara_publish_is_leader") == 0
        await standby.sample_metrics()  # a second look, later: the same changes, older
        assert 0 < value("suara_publish_lag_seconds") <= time.time() - before
    finally:
        await standby.stop(0.5)
