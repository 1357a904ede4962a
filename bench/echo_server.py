"""The baseline: a bare grpc.aio server that answers every unary call with a fixed-size reply.

Run as its own process, like tally, so client and server do not share one event loop.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import grpc

METHOD = "/bench.Echo/Echo"


async def main(port: int, reply_size: int, key_and_cert: tuple[bytes, bytes] | None = None) -> None:
    """With `key_and_cert` (PEM): TLS with that certificate, as tally serves it."""
    reply = b"x" * reply_size

    async def echo(request: bytes, context: Any) -> bytes:
        return reply

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {"Echo": grpc.unary_unary_rpc_method_handler(echo, request_deserializer=None, response_serializer=None)},
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    if key_and_cert is not None:
        server.add_secure_port(f"127.0.0.1:{port}", grpc.ssl_server_credentials([key_and_cert]))
    else:
        server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    from cli import loop_factory
    from suara.runtime.settings import Settings

    # The same event loop as tally's, so the ratio compares the work, not the loops.
    with asyncio.Runner(loop_factory=loop_factory(Settings.from_env().event_loop)) as runner:
        tls = (Path(sys.argv[4]).read_bytes(), Path(sys.argv[3]).read_bytes()) if len(sys.argv) > 4 else None
        runner.run(main(int(sys.argv[1]), int(sys.argv[2]), tls))
