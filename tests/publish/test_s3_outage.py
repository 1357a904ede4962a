"""Object storage down for a while (issue 15's drill 5, publish's half): publish's cycles fail while the
bucket (SeaweedFS, the real S3 server) is down, nothing is lost meanwhile, and the first cycle after it
is back brings the bucket to exactly what a fresh full cycle writes.

The oracle is a fresh full cycle into a directory (LocalSink), as in test_s3_publish.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from pathlib import Path

import pytest
from botocore.exceptions import EndpointConnectionError

from cli.seaweedfs import SeaweedFS
from services.publish.sinks.local import LocalSink
from services.publish.sinks.s3 import S3Sink
from tests.support.publish import PER_PUBLISHER, Pipeline
from tests.support.s3 import Bucket

PREFIX = "pemilu2024"
CONTEST = "pkwkp"  # one province's contest: a few hundred objects a cycle (see test_s3_publish.py)
POINTER = ("suara/snapshot.json", "suara/snapshot.json.gz")  # names the snapshot: differs per cycle


async def test_publish_catches_up_exactly_after_the_bucket_was_down(
    pipeline: Pipeline, s3_endpoint: str, tmp_path: Path, seaweedfs: SeaweedFS
) -> None:
    del s3_endpoint  # for its AWS_* environment; a SeaweedFS of the test's own, to stop and start
    bucket = await asyncio.to_thread(Bucket, seaweedfs.endpoint, "site")
    sink = S3Sink(bucket.name, PREFIX + "/", endpoint_url=seaweedfs.endpoint, concurrency=8)
    s3 = pipeline.publisher_for(sink, (CONTEST,))
    rng = random.Random(15)
    await pipeline.random_night(rng, 20, contest=CONTEST)
    await pipeline.delivered()
    first = await s3.cycle(full=True)
    assert first is not None

    await asyncio.to_thread(seaweedfs.stop)  # the bucket is down; the night goes on
    await pipeline.random_night(rng, 20, contest=CONTEST)
    await pipeline.delivered()
    with pytest.raises(EndpointConnectionError):
        await s3.cycle()

    await asyncio.to_thread(seaweedfs.start)  # back, on the same ports with the same data
    caught_up = await s3.cycle()
    assert caught_up is not None and caught_up.snapshot == first.snapshot + 1, "the failed cycle left no trace"
    await sink.close()

    fresh = await pipeline.publisher_for(LocalSink(tmp_path / "fresh"), (CONTEST,)).cycle(full=True)
    assert fresh is not None
    fresh_files = {p.relative_to(tmp_path / "fresh").as_posix(): p for p in (tmp_path / "fresh").rglob("*")}
    expected = {
        path: p.read_bytes() for path, p in fresh_files.items() if p.is_file() and not path.startswith(PER_PUBLISHER)
    }
    etags = await asyncio.to_thread(bucket.etags)
    missing = [p for p in expected if f"{PREFIX}/{p}" not in etags]
    wrong = [
        p for p, body in expected.items()
        if p not in POINTER and etags.get(f"{PREFIX}/{p}") != hashlib.md5(body, usedforsecurity=False).hexdigest()
    ]  # fmt: skip
    assert missing == [] and wrong == [], f"{len(missing)} missing, {len(wrong)} differ: {(missing + wrong)[:5]}"
