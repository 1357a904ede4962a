"""Content-addressed object stores: bytes kept under their SHA-256, in a directory or an S3-compatible bucket.

Form photos live here rather than in PostgreSQL, so they are not written into the WAL (and replicated
synchronously) with every form. A key is the lowercase hex SHA-256 of its body, so a second put of the
same key has nothing new to write and is a no-op, and any number of processes may share one store.
Blocking I/O (files, boto3) runs in the store's own thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from suara.runtime.errors import Unavailable
from suara.runtime.settings import SettingError

if TYPE_CHECKING:
    from suara.runtime.settings import Settings

_KEY = re.compile(r"^[0-9a-f]{64}$")
# S3's bucket naming rules (lowercase letters, digits, dots and hyphens; 3 to 63 long).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class ObjectStoreError(Unavailable):
    """The store could not be read or written: nothing was stored as far as the caller knows; retry."""


def check_key(key: str, body: bytes | None = None) -> str:
    """`key` if it is a SHA-256 in lowercase hex (and, given `body`, the body's); else ValueError."""
    if not _KEY.match(key):
        raise ValueError(f"object key must be 64 lowercase hex digits (a SHA-256), got {key!r}")
    if body is not None and hashlib.sha256(body).hexdigest() != key:
        raise ValueError(f"object body does not have the SHA-256 {key} that names it")
    return key


class ObjectStore(Protocol):
    def describe(self) -> str: ...

    async def put(self, key: str, body: bytes, content_type: str) -> bool:
        """Store `body` under `key`, its SHA-256; True if written now, False if it was already there."""
        ...

    async def get(self, key: str) -> bytes | None:
        """The body stored under `key`, or None if there is none."""
        ...

    async def close(self) -> None: ...


class LocalObjectStore:
    """A directory, one file per object at <root>/<ab>/<cd>/<key>: two levels of 256 keep directories small.

    A put writes a temporary file beside the final one, fsyncs it, renames it into place and fsyncs the
    directory, so a reader never sees part of an object and a crash leaves either nothing or all of it
    (at worst a stray temporary file). Several processes may share the directory: two writers of one key
    write the same bytes, and the rename of either wins. The content type is not kept (the caller's
    database keeps it).
    """

    def __init__(self, root: Path, threads: int = 4) -> None:
        self.root = root
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="objects")

    def describe(self) -> str:
        return str(self.root)

    def path(self, key: str) -> Path:
        check_key(key)
        return self.root / key[:2] / key[2:4] / key

    def _put(self, key: str, body: bytes) -> bool:
        check_key(key, body)
        final = self.path(key)
        if final.exists():
            return False
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = final.with_name(f".{key}.{uuid.uuid4().hex}.tmp")
        try:
            with temp.open("wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            temp.replace(final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        fd = os.open(final.parent, os.O_RDONLY)  # the rename itself durable, not only the bytes
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def _get(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            return None

    async def put(self, key: str, body: bytes, content_type: str) -> bool:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._put, key, body)
        except OSError as exc:
            raise ObjectStoreError(f"photo store {self.root}: cannot write {key}: {exc}") from exc

    async def get(self, key: str) -> bytes | None:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._get, key)
        except OSError as exc:
            raise ObjectStoreError(f"photo store {self.root}: cannot read {key}: {exc}") from exc

    async def close(self) -> None:
        await asyncio.to_thread(self._pool.shutdown, True)


def s3_client(endpoint_url: str | None, region: str = "us-east-1", connections: int = 16) -> Any:
    """A boto3 S3 client for AWS or, given `endpoint_url`, an S3-compatible server (SeaweedFS, MinIO, Ceph).

    Credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, profile,
    instance role). Clients are thread-safe; creating one is not cheap: one per store.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        max_pool_connections=connections,
        retries={"mode": "standard", "max_attempts": 5},
        # S3-compatible servers are addressed by host:port, not bucket subdomains.
        s3={"addressing_style": "path"} if endpoint_url else {},
        # boto3 ≥ 1.36 adds CRC checksums (aws-chunked bodies) to every upload by default, which several
        # S3-compatible servers reject; against those, send checksums only where an API requires them.
        request_checksum_calculation="when_required" if endpoint_url else "when_supported",
        response_checksum_validation="when_required" if endpoint_url else "when_supported",
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def is_missing(error: Exception) -> bool:
    """Whether a botocore ClientError says the object (or bucket) is not there."""
    code = getattr(error, "response", {}).get("Error", {}).get("Code")
    return code in ("404", "NoSuchKey", "NotFound")


class S3ObjectStore:
    """A bucket (and key prefix) of S3 or an S3-compatible server; objects at <prefix>/<ab>/<key>.

    A put first asks whether the key is there (HEAD) and writes only if not; PutObject replaces an
    object atomically, so a race between two writers of one key stores the same bytes either way.
    The credentials need s3:ListBucket as well as Get/PutObject: without it S3 answers a HEAD of a
    missing object with 403, which is then an error rather than "not there".
    """

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, threads: int = 16) -> None:
        if not _BUCKET.match(bucket):
            raise ValueError(f"not an S3 bucket name: {bucket!r}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self._client = s3_client(endpoint_url, connections=threads)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="objects-s3")

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        return f"{where} via {self.endpoint_url}" if self.endpoint_url else where

    def object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key[:2]}/{key}" if self.prefix else f"{key[:2]}/{key}"

    def _put(self, key: str, body: bytes, content_type: str) -> bool:
        from botocore.exceptions import ClientError

        check_key(key, body)
        name = self.object_key(key)
        try:
            self._client.head_object(Bucket=self.bucket, Key=name)
            return False
        except ClientError as exc:
            if not is_missing(exc):
                raise
        self._client.put_object(Bucket=self.bucket, Key=name, Body=body, ContentType=content_type)
        return True

    def _get(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if is_missing(exc):  # a missing bucket is NoSuchBucket: an error, not a missing photo
                return None
            raise
        body: bytes = response["Body"].read()
        return body

    async def put(self, key: str, body: bytes, content_type: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._put, key, body, content_type)
        except (BotoCoreError, ClientError) as exc:
            raise ObjectStoreError(f"photo store {self.describe()}: cannot write {key}: {exc}") from exc

    async def get(self, key: str) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._get, key)
        except (BotoCoreError, ClientError) as exc:
            raise ObjectStoreError(f"photo store {self.describe()}: cannot read {key}: {exc}") from exc

    async def close(self) -> None:
        await asyncio.to_thread(self._pool.shutdown, True)
        with contextlib.suppress(Exception):
            self._client.close()


def parse_s3_url(url: str) -> tuple[str, str] | None:
    """(bucket, prefix) of s3://bucket/prefix; None if `url` is not one (a bad bucket name included)."""
    if not url.startswith("s3://"):
        return None
    bucket, _, prefix = url[len("s3://") :].partition("/")
    return (bucket, prefix.strip("/")) if _BUCKET.match(bucket) else None


def open_store(where: str, endpoint_url: str = "") -> ObjectStore:
    """The store at `where`: s3://bucket/prefix, or a directory (created if missing)."""
    if where.startswith("s3://"):
        parsed = parse_s3_url(where)
        if parsed is None:
            raise ValueError(f"not s3://bucket/prefix with a valid bucket name: {where!r}")
        return S3ObjectStore(parsed[0], parsed[1], endpoint_url or None)
    root = Path(where)
    root.mkdir(parents=True, exist_ok=True)
    return LocalObjectStore(root)


def photo_store(settings: Settings) -> ObjectStore:
    """The photo store of SUARA_PHOTO_STORE (empty: SUARA_DATA_DIR/photos), shared by every tally process."""
    where = settings.tally.photo_store or str(settings.data_dir / "photos")
    try:
        return open_store(where, settings.tally.photo_store_endpoint_url)
    except (OSError, ValueError) as exc:
        raise SettingError("SUARA_PHOTO_STORE", where, f"a writable directory, or s3://bucket/prefix ({exc})") from exc
