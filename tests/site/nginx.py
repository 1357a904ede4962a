"""Run the deploy/nginx templates with the real nginx: fill the placeholders (cli/nginx.py), start it in
the foreground under a private prefix, stop it at the end."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
from collections.abc import AsyncIterator
from pathlib import Path

from cli.embedded import free_port
from cli.nginx import command, render
from tests.support.waiting import poll_until


def _text(log: Path) -> str:
    return log.read_text(errors="replace")


async def _wait_listening(port: int, process: asyncio.subprocess.Process, log: Path, within: float) -> None:
    """Until nginx, an external process starting up, accepts connections on `port`."""

    def running() -> None:
        if process.returncode is not None:
            raise RuntimeError(f"nginx exited with {process.returncode}: {_text(log)}")

    async def listening() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        return True

    await poll_until(
        listening, f"nginx listening on {port}", within, running, detail=lambda: _text(log), interval_s=0.05
    )


@contextlib.asynccontextmanager
async def run_nginx(
    nginx: str, template: Path, prefix: Path, within: float = 10.0, **values: str
) -> AsyncIterator[str]:
    """nginx with `template` (PORT and USER filled in here) for the block; yields its base URL."""
    port = free_port()  # nginx binds it a moment later: a small race with other processes, fine on a test machine
    conf = render(template, prefix, PORT=f"127.0.0.1:{port}", USER=getpass.getuser(), **values)
    log = prefix / "nginx.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(nginx, *command(conf, prefix)[1:], stdout=out, stderr=out)
    try:
        await _wait_listening(port, process, log, within)
        yield f"http://127.0.0.1:{port}"
    finally:
        if process.returncode is None:
            process.terminate()  # SIGTERM: fast shutdown, the master stops its workers
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
