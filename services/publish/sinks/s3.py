"""An S3 (or S3-compatible) bucket as the site."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from services.publish.files import SiteFile
from services.publish.sinks.base import check_path
from suara.runtime.objects import is_missing, s3_client


class S3Sink:
    """An S3 (or S3-compatible) bucket; PutObject replaces an object atomically.

    `cheap_reads` is False: a GET per file would cost about what the PUT it saves does.

    boto3 is blocking, so the calls run in a pool of `concurrency` threads sharing one client (clients
    are thread-safe; creating one is not cheap). Credentials come from boto3's usual chain
    (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, profile, instance role). They need s3:ListBucket as well
    as Get/PutObject: without it S3 answers a HEAD of a missing object with 403, and `exists` raises.
    """

    cheap_reads = False

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        concurrency: int = 16,
    ) -> None:
        if not bucket:
            raise ValueError("S3Sink needs a bucket")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self._concurrency = concurrency
        self._client: Any = s3_client(endpoint_url, region, concurrency)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="s3sink")

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        return f"{where} via {self.endpoint_url}" if self.endpoint_url else where

    def _key(self, path: str) -> str:
        path = check_path(path)
        return f"{self.prefix}/{path}" if self.prefix else path

    def _put_file(self, f: SiteFile) -> None:
        gz = f.gzipped()
        if gz is not None:
            self._client.put_object(
                Bucket=self.bucket,
                Key=self._key(f.path + ".gz"),
                Body=gz,
                ContentType=f.content_type,  # the JSON's type: served as-is with Content-Encoding
                ContentEncoding="gzip",
                CacheControl=f.cache_control,
            )
        self._client.put_object(
            Bucket=self.bucket,
            Key=self._key(f.path),
            Body=f.body,
            ContentType=f.content_type,
            CacheControl=f.cache_control,
        )

    async def write(self, files: Sequence[SiteFile]) -> None:
        loop = asyncio.get_running_loop()
        it = iter(files)

        async def worker() -> None:
            for f in it:  # shared iterator: at most `concurrency` uploads in flight, no task per file up front
                await loop.run_in_executor(self._pool, self._put_file, f)

        async with asyncio.TaskGroup() as tg:
            for _ in range(min(self._concurrency, len(files))):
                tg.create_task(worker())

    def _head(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if is_missing(e):
                return False
            raise
        return True

    def _get(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if is_missing(e):
                return None
            raise
        body: bytes = response["Body"].read()
        return body

    async def exists(self, path: str) -> bool:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._head, self._key(path))

    async def read(self, path: str) -> bytes | None:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._get, self._key(path))

    async def sweep_temp(self) -> int:
        return 0  # a PUT that never finished left no object behind

    async def close(self) -> None:
        await asyncio.to_thread(self._pool.shutdown, True)
        self._client.close()
