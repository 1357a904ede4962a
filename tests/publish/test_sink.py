"""The sinks: what is written reads back byte for byte, `.gz` siblings match, replacement is atomic.

The oracle is independent of the sinks: plain file reads and `gzip.decompress` for the directory,
a separate boto3 client for the bucket, and a dict of last writes for the property test.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.publish.cache import IMMUTABLE, POINTER
from services.publish.files import SiteFile
from services.publish.sinks import sink_from_url
from services.publish.sinks.local import LocalSink
from services.publish.sinks.s3 import S3Sink
from tests.support.s3 import Bucket, bucket_name


def _site() -> list[SiteFile]:
    return [
        SiteFile("pemilu/hhcw/ppwp.json", b'{"chart":{"100025":83}}'),
        SiteFile("pemilu/hhcw/ppwp/31/3101.json", '{"nama":"KEPULAUAN SERIBU","ü":1}'.encode()),
        SiteFile("suara/snapshot.json", b'{"snapshot":42}'),
        SiteFile("foto/4f/" + "4f" * 32 + ".jpg", b"\xff\xd8\xff\xe0 not really a jpeg"),
        SiteFile("index.html", b"<!doctype html><title>suara</title>"),
    ]


def _all_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


# --- LocalSink ---------------------------------------------------------------------------------------


async def test_local_writes_files_and_gz_siblings(tmp_path: Path) -> None:
    files = _site()
    sink = LocalSink(tmp_path / "site")
    await sink.write(files)

    expected: set[str] = set()
    for f in files:
        assert (tmp_path / "site" / f.path).read_bytes() == f.body
        expected.add(f.path)
        if f.path.endswith(".jpg"):
            assert not (tmp_path / "site" / (f.path + ".gz")).exists()  # already compressed: no .gz
        else:
            assert gzip.decompress((tmp_path / "site" / (f.path + ".gz")).read_bytes()) == f.body
            expected.add(f.path + ".gz")
    assert _all_files(tmp_path / "site") == expected  # nothing else, in particular no temp files
    assert oct((tmp_path / "site" / "index.html").stat().st_mode & 0o777) == oct(0o644 & ~_umask())

    assert await sink.read("suara/snapshot.json") == b'{"snapshot":42}'
    assert await sink.read("suara/nothing.json") is None
    assert await sink.exists(files[3].path)
    assert not await sink.exists("foto/00/none.jpg")
    with pytest.raises(ValueError):
        await sink.read("../outside")
    await sink.close()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


async def test_local_writes_gz_before_plain_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The order files appear in (the rename is the moment a file appears): each .gz before its file."""
    appeared: list[str] = []
    real_replace = os.replace

    def recording_replace(src: str, dst: str) -> None:
        real_replace(src, dst)
        appeared.append(Path(dst).relative_to(tmp_path).as_posix())

    monkeypatch.setattr(os, "replace", recording_replace)  # the sink calls os.replace: the moment a file appears
    files = _site()
    await LocalSink(tmp_path, chunk=2).write(files)
    for f in files:
        if f.gzipped() is not None:
            assert appeared.index(f.path + ".gz") < appeared.index(f.path)
    assert sorted(appeared) == sorted(_all_files(tmp_path))


async def test_local_replace_is_atomic_for_a_concurrent_reader(tmp_path: Path) -> None:
    """A reader hammering one file while it is rewritten with bodies of other sizes only ever sees whole bodies."""
    path = "pemilu/hhcw/ppwp/31.json"
    # Distinct sizes and fill bytes: a torn read (old/new mix, or a truncated file) matches none of them.
    bodies = [bytes([65 + i % 26]) * (1 + (i * 7919) % 150_000) for i in range(200)]
    sink = LocalSink(tmp_path)
    await sink.write([SiteFile(path, bodies[0])])
    target = tmp_path / path
    whole = set(bodies)
    seen: list[bytes] = []
    bad: list[int] = []
    started = threading.Event()
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            data = target.read_bytes()
            started.set()
            if data not in whole:
                bad.append(len(data))
            seen.append(data)

    thread = threading.Thread(target=reader)
    thread.start()
    started.wait()
    for body in bodies[1:]:
        await sink.write([SiteFile(path, body)])
    done.set()
    thread.join()

    assert bad == []
    assert len(seen) > 1
    assert target.read_bytes() == bodies[-1]
    assert gzip.decompress((tmp_path / (path + ".gz")).read_bytes()) == bodies[-1]
    assert _all_files(tmp_path) == {path, path + ".gz"}


async def test_sweep_temp_removes_leftovers_of_a_killed_run(tmp_path: Path) -> None:
    sink = LocalSink(tmp_path)
    await sink.write(_site())
    leftovers = [
        tmp_path / "pemilu/hhcw/.ppwp.json.4242.7.tmp",
        tmp_path / "pemilu/hhcw/ppwp/31/.3101.json.gz.4242.8.tmp",
        tmp_path / ".index.html.1.0.tmp",
    ]
    for p in leftovers:
        p.write_bytes(b'{"partial')
    keep = tmp_path / "pemilu/notes.tmp"  # not a name the sink makes: left alone
    keep.write_bytes(b"x")
    before = _all_files(tmp_path)

    assert await sink.sweep_temp() == len(leftovers)
    assert _all_files(tmp_path) == before - {p.relative_to(tmp_path).as_posix() for p in leftovers}
    assert await sink.sweep_temp() == 0


async def test_local_recreates_a_directory_removed_behind_its_cache(tmp_path: Path) -> None:
    sink = LocalSink(tmp_path)
    await sink.write([SiteFile("a/b/c.json", b"1")])
    for p in sorted((tmp_path / "a").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (tmp_path / "a").rmdir()
    await sink.write([SiteFile("a/b/c.json", b"2")])
    assert (tmp_path / "a/b/c.json").read_bytes() == b"2"


_DIRS = st.sampled_from(["pemilu", "hhcw", "31", "3101", "suara", "foto"])
_LEAVES = st.sampled_from(["0.json", "31.json", "3101.json", "a.jpg", "index.html", "x.png"])
_PATHS = st.builds(lambda dirs, leaf: "/".join([*dirs, leaf]), st.lists(_DIRS, max_size=3), _LEAVES)
_BATCH = st.lists(st.tuples(_PATHS, st.binary(max_size=2000)), max_size=12)


@settings(max_examples=60, deadline=None)
@given(batches=st.lists(_BATCH, min_size=1, max_size=4), chunk=st.integers(1, 5))
def test_local_last_write_wins(batches: list[list[tuple[str, bytes]]], chunk: int) -> None:
    """Whatever was written last to a path is what reads back, for the file and its .gz; nothing else is there."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sink = LocalSink(root, chunk=chunk)
        last: dict[str, bytes] = {}

        async def run() -> None:
            for batch in batches:
                # One call holds each path once: within a call the order of files is not promised.
                unique = dict(batch)
                await sink.write([SiteFile(p, b) for p, b in unique.items()])
                last.update(unique)
            for p, b in last.items():
                assert await sink.read(p) == b

        asyncio.run(run())
        expected = set(last) | {p + ".gz" for p in last if SiteFile(p, b"").gzipped() is not None}
        assert _all_files(root) == expected
        for p, b in last.items():
            assert (root / p).read_bytes() == b
            if p + ".gz" in expected:
                assert gzip.decompress((root / (p + ".gz")).read_bytes()) == b


# --- S3Sink ------------------------------------------------------------------------------------------


async def test_s3_objects_headers_and_reads(s3_endpoint: str, tmp_path: Path) -> None:
    """Against SeaweedFS's S3 gateway (tests/support/s3.py). Checked with a boto3 client of the test's own:
    bodies, Content-Type, Cache-Control, and the .gz objects' Content-Encoding; then the sink's own
    `exists` and `read`.
    """
    bucket = bucket_name("site", tmp_path)
    oracle = Bucket(s3_endpoint, bucket).client
    sink = S3Sink(bucket, prefix="pemilu2024/", endpoint_url=s3_endpoint, concurrency=4)
    assert sink.describe() == f"s3://{bucket}/pemilu2024 via {s3_endpoint}"
    files = _site()
    await sink.write(files)

    keys = {o["Key"] for o in oracle.list_objects_v2(Bucket=bucket)["Contents"]}
    expected_keys: set[str] = set()
    for f in files:
        key = "pemilu2024/" + f.path
        expected_keys.add(key)
        obj = oracle.get_object(Bucket=bucket, Key=key)
        assert obj["Body"].read() == f.body
        assert obj["ContentType"] == f.content_type
        assert obj["CacheControl"] == f.cache_control
        assert obj.get("ContentEncoding") in (None, "")
        if f.gzipped() is None:
            continue
        expected_keys.add(key + ".gz")
        gz = oracle.get_object(Bucket=bucket, Key=key + ".gz")
        assert gzip.decompress(gz["Body"].read()) == f.body
        assert gz["ContentType"] == f.content_type  # the JSON's type, not application/gzip
        assert gz["ContentEncoding"] == "gzip"
        assert gz["CacheControl"] == f.cache_control
    assert keys == expected_keys
    assert oracle.head_object(Bucket=bucket, Key="pemilu2024/suara/snapshot.json")["CacheControl"] == POINTER
    assert oracle.head_object(Bucket=bucket, Key="pemilu2024/" + files[3].path)["CacheControl"] == IMMUTABLE

    assert await sink.exists(files[3].path)
    assert not await sink.exists("foto/00/none.jpg")
    assert await sink.read("suara/snapshot.json") == b'{"snapshot":42}'
    assert await sink.read("suara/nothing.json") is None

    await sink.write([SiteFile("suara/snapshot.json", b'{"snapshot":43}')])  # a rewrite replaces the object
    assert await sink.read("suara/snapshot.json") == b'{"snapshot":43}'
    await sink.close()


async def test_s3_writes_gz_before_plain_object(s3_endpoint: str, tmp_path: Path) -> None:
    """Against SeaweedFS's S3 gateway (tests/support/s3.py)."""
    bucket = Bucket(s3_endpoint, bucket_name("order", tmp_path)).name
    sink = S3Sink(bucket, endpoint_url=s3_endpoint, concurrency=3)
    done: list[str] = []
    lock = threading.Lock()
    real_put = sink._client.put_object

    def recording_put(**kwargs: Any) -> Any:
        result = real_put(**kwargs)
        with lock:
            done.append(kwargs["Key"])
        return result

    sink._client.put_object = recording_put
    files = [SiteFile(f"pemilu/hhcw/ppwp/{i:02d}.json", b"{}" * i) for i in range(20)]
    await sink.write(files)
    assert sorted(done) == sorted([f.path for f in files] + [f.path + ".gz" for f in files])
    for f in files:
        assert done.index(f.path + ".gz") < done.index(f.path)
    await sink.close()


def test_sink_from_url(tmp_path: Path) -> None:
    local = sink_from_url(str(tmp_path / "site"))
    assert isinstance(local, LocalSink)
    assert local.root == tmp_path / "site"
    s3 = sink_from_url("s3://results/pemilu/2024/", s3_endpoint_url="http://127.0.0.1:9000")
    assert isinstance(s3, S3Sink)
    assert (s3.bucket, s3.prefix, s3.endpoint_url) == ("results", "pemilu/2024", "http://127.0.0.1:9000")
    bare = sink_from_url("s3://results")
    assert isinstance(bare, S3Sink)
    assert (bare.bucket, bare.prefix, bare.endpoint_url) == ("results", "", None)
    assert bare.describe() == "s3://results"
    with pytest.raises(ValueError):
        sink_from_url("s3:///prefix")
