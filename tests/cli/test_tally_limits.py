"""Bounds before work: oversized and decompression-bomb calls to a real tally process are refused by size,
precisely, without the process holding them in memory."""

from __future__ import annotations

import asyncio
import gzip
import os
from pathlib import Path

import asyncpg
import grpc

from services.tally.server import SERVICE_NAME
from suara.runtime.settings import Settings
from suara.runtime.wire import tally_submit_bytes
from suara.v1 import form_pb2, tally_pb2
from tests.cli.test_tally import tally_process

MiB = 1024 * 1024
CALLS = 8
BIG = 60 * MiB
RSS_BUDGET = 50 * MiB  # the bound on what eight such calls may cost tally


def _rss(pid: int) -> int:
    """Resident memory of a process, in bytes (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _submit(photo: bytes) -> bytes:
    """A Submit request carrying one photo of these bytes, serialized: what goes on the wire."""
    request = tally_pb2.SubmitRequest(
        form=form_pb2.SignedForm(payload=b"\x0a\x01x", signature=bytes(64), device_id="dev_x"),
        photos=[tally_pb2.Photo(content=photo)],
    )
    return request.SerializeToString()


async def test_oversized_and_gzip_bomb_calls_are_refused_by_size_without_memory(
    db: asyncpg.Connection, cli_env: dict[str, str], tmp_path: Path
) -> None:
    limit = tally_submit_bytes(Settings().tally.photo_max_bytes)  # the documented default
    plain = _submit(os.urandom(BIG))  # incompressible: every byte crosses the wire
    bomb = _submit(bytes(BIG))  # compresses about 1,000 to 1
    assert len(gzip.compress(bomb)) < len(bomb) // 500
    async with tally_process(cli_env, tmp_path) as served:
        submit: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = served.channel.unary_unary(f"/{SERVICE_NAME}/Submit")
        small = await served.stub.GetChainHead(tally_pb2.GetChainHeadRequest())  # warm: the baseline serves
        assert small.chain_head.position == 0
        before = _rss(served.proc.pid)
        for compression, body in ((None, plain), (grpc.Compression.Gzip, bomb)):
            results = await asyncio.gather(
                *(submit(body, compression=compression, timeout=60) for _ in range(CALLS)), return_exceptions=True
            )
            for result in results:
                assert isinstance(result, grpc.aio.AioRpcError), f"a {len(body)}-byte call was taken: {result!r}"
                assert result.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, result
                details = result.details() or ""
                if compression is None:
                    assert f"{len(body)} vs. {limit}" in details, details  # gRPC names both sizes
                else:
                    assert "Decompressed message larger than max" in details, details
        grown = _rss(served.proc.pid) - before
        assert grown < RSS_BUDGET, f"tally grew by {grown / MiB:.0f} MiB"
        assert served.proc.returncode is None
        assert await db.fetchval("SELECT count(*) FROM tally.submission") == 0
        # A call just over Submit's own limit but under nothing else is refused by tally, naming it.
        with_photos = tally_pb2.SubmitRequest.FromString(_submit(os.urandom(limit)))
        try:
            await served.stub.Submit(with_photos, timeout=60)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert str(limit) in (error.details() or "")
        else:
            raise AssertionError("a Submit above its limit was taken")
        # Each method has its own limit below the server's: a read request is an id, not megabytes.
        try:
            await served.stub.GetChainHead(tally_pb2.GetChainHeadRequest.FromString(b""), timeout=10)
            huge_id = tally_pb2.GetPhotoRequest(sha256="a" * MiB)
            await served.stub.GetPhoto(huge_id, timeout=10)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "GetPhoto's limit of 65536 bytes" in (error.details() or "")
        else:
            raise AssertionError("a 1 MiB GetPhoto request was taken")
