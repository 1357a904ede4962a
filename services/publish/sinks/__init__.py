"""Where the published site goes: a local directory (served by nginx or `suara publish serve`) or an S3
bucket. The contract every sink keeps is base.py's `Sink`."""

from __future__ import annotations

from pathlib import Path

from services.publish.sinks.base import Sink
from services.publish.sinks.local import LocalSink
from services.publish.sinks.s3 import S3Sink


def sink_from_url(target: str, *, s3_endpoint_url: str | None = None) -> Sink:
    """`s3://bucket/prefix` → S3Sink (at `s3_endpoint_url` when given); anything else is a local directory."""
    if target.startswith("s3://"):
        bucket, _, prefix = target.removeprefix("s3://").partition("/")
        if not bucket:
            raise ValueError(f"no bucket in {target!r}")
        return S3Sink(bucket, prefix, endpoint_url=s3_endpoint_url)
    return LocalSink(Path(target))
