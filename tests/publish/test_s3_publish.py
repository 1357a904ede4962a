"""The publisher end to end through the S3 sink: what lands in the bucket is, object for object and byte
for byte, what a full cycle writes to a directory, with each object's headers from the cache table.

The bucket is SeaweedFS's (tests/support/s3.py), a real S3-compatible server.
The bucket is read back with a boto3 client of the test's own; the directory a LocalSink wrote is the
reference for the bytes, and services.publish.cache's table the reference for the headers.

Both publishers publish one contest, pkwkp (the governor of province 31): a full cycle of every contest
over the test registry is 26k files plus their .gz, minutes of uploads on two shared cores. One province
has every kind of file — candidates, region lists and totals at each level, TPS files with and without
data, quarantined ones, photos, status, history, NIST, the page's assets and the pointer — in a few
hundred objects.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from services.publish.cache import cache_control_for, content_type_for
from services.publish.cycle import Publisher
from services.publish.sinks.base import Sink
from services.publish.sinks.local import LocalSink
from services.publish.sinks.s3 import S3Sink
from tests.support.publish import PER_PUBLISHER, Pipeline
from tests.support.s3 import Bucket, Object, bucket_name

PREFIX = "pemilu2024"
CONTEST = "pkwkp"
POINTER = ("suara/snapshot.json", "suara/snapshot.json.gz")  # names its snapshot id and time: differs per cycle


def _publisher(pipeline: Pipeline, sink: Sink) -> Publisher:
    """A publisher of the one contest (see the module's docstring)."""
    return pipeline.publisher_for(sink, (CONTEST,))


def _tree(root: Path) -> dict[str, bytes]:
    files = (p for p in root.rglob("*") if p.is_file())
    return {
        path: p.read_bytes() for p in files if not (path := p.relative_to(root).as_posix()).startswith(PER_PUBLISHER)
    }


def _etags(bucket: Bucket) -> dict[str, str]:
    return {k: v for k, v in bucket.etags().items() if not k.removeprefix(f"{PREFIX}/").startswith(PER_PUBLISHER)}


def _md5(body: bytes) -> str:
    return hashlib.md5(body, usedforsecurity=False).hexdigest()


def _check_object(path: str, obj: Object, expected_body: bytes) -> None:
    assert obj.body == expected_body, path
    assert obj.content_type == content_type_for(path), path
    assert obj.cache_control == cache_control_for(path), path
    if path.endswith(".gz"):
        assert obj.content_encoding == "gzip", path
        assert obj.content_type == content_type_for(path.removesuffix(".gz")), path  # the JSON's type
        assert obj.content_type != "application/gzip", path
    else:
        assert obj.content_encoding is None, path


async def test_a_full_cycle_to_s3_equals_one_to_a_directory_and_an_incremental_one_follows(
    pipeline: Pipeline, s3_endpoint: str, tmp_path: Path
) -> None:
    rng = random.Random(5)
    await pipeline.random_night(rng, 40, contest=CONTEST)
    await pipeline.random_night(rng, 10)  # another contest's forms: not in this publisher's files
    await pipeline.delivered()

    bucket = Bucket(s3_endpoint, bucket_name("suara", tmp_path))
    s3 = _publisher(pipeline, S3Sink(bucket.name, PREFIX + "/", endpoint_url=s3_endpoint, concurrency=8))
    result = await s3.cycle(full=True)
    assert result is not None and result.full
    local = await _publisher(pipeline, LocalSink(tmp_path / "local")).cycle(full=True)
    assert local is not None and local.full and local.snapshot == result.snapshot + 1

    # Same keys (under the prefix), same bytes, headers from the cache table: every object read back.
    expected = _tree(tmp_path / "local")
    keys = _etags(bucket)
    assert set(keys) == {f"{PREFIX}/{path}" for path in expected}
    objects = await bucket.get_many(sorted(keys))
    for path, body in expected.items():
        if path in POINTER:
            continue
        _check_object(path, objects[f"{PREFIX}/{path}"], body)
    assert any(path.endswith(".gz") for path in expected) and any(path.startswith("foto/") for path in expected)
    tps_files = [p for p in expected if p.startswith(f"pemilu/hhcw/{CONTEST}/") and p.count("/") == 7]
    assert tps_files and "index.html" in expected and f"wilayah/pemilu/{CONTEST}/0.json" in expected
    assert not any("/ppwp" in path for path in expected), "one contest only"
    for path in POINTER:  # the pointer too has its headers, and names the S3 cycle's snapshot
        _check_object(path, objects[f"{PREFIX}/{path}"], objects[f"{PREFIX}/{path}"].body)
    before = {key: _md5(obj.body) for key, obj in objects.items()}

    # More of the night, then an incremental cycle into the bucket.
    await pipeline.random_night(rng, 20, contest=CONTEST)
    await pipeline.delivered()
    incremental = await s3.cycle()
    assert incremental is not None and not incremental.full and incremental.snapshot == local.snapshot + 1
    assert 0 < incremental.files < result.files, "an incremental cycle writes what changed, not everything"
    fresh = await _publisher(pipeline, LocalSink(tmp_path / "after")).cycle(full=True)
    assert fresh is not None
    after_expected = _tree(tmp_path / "after")

    after = _etags(bucket)
    stale_photos = set(after) - {f"{PREFIX}/{path}" for path in after_expected}
    # Photos of forms since corrected stay (immutable, named by their hash); nothing else is left over.
    assert all(key.startswith(f"{PREFIX}/foto/") for key in stale_photos), sorted(stale_photos)[:5]
    assert {f"{PREFIX}/{path}" for path in after_expected} <= set(after)
    wrong = [p for p, body in after_expected.items() if p not in POINTER and after[f"{PREFIX}/{p}"] != _md5(body)]
    assert not wrong, f"{len(wrong)} objects differ from a fresh full cycle, first: {wrong[:5]}"

    changed = sorted(key for key, md5 in after.items() if before.get(key) != md5)
    assert changed, "the incremental cycle changed nothing"
    expected_changed = sorted(
        f"{PREFIX}/{p}" for p, body in after_expected.items() if expected.get(p) != body and p not in POINTER
    )
    assert [k for k in changed if not k.removeprefix(f"{PREFIX}/").startswith(POINTER)] == expected_changed
    for key, obj in (await bucket.get_many(changed)).items():  # what changed carries its headers too
        path = key.removeprefix(f"{PREFIX}/")
        _check_object(path, obj, after_expected[path] if path not in POINTER else obj.body)
    pointer_snapshot = (await bucket.get_many([f"{PREFIX}/suara/snapshot.json"]))[f"{PREFIX}/suara/snapshot.json"]
    assert f'"snapshot":{incremental.snapshot},'.encode() in pointer_snapshot.body
