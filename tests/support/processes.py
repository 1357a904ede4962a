"""The `suara` command as an operator runs it: the installed script in a real subprocess.

Every run gets a scrubbed environment (no DATABASE_URL or SUARA_* leaking in from the
machine running the tests) plus exactly the settings a test gives it, and runs in the
test's own directory, so a default output path can never land in the working tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.waiting import within

# The console script installed next to the interpreter running the tests (`[project.scripts] suara`).
SUARA = Path(sys.executable).with_name("suara")
# Upper bound for one short command (help, migrate, enroll…); it normally takes well under a second.
COMMAND_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str


def suara_env(**settings: str | Path) -> dict[str, str]:
    """This process's environment without any suara or OpenTelemetry setting, plus the suite's TLS (its CA,
    CRL and the services' certificates: servers serve TLS, clients verify) and `settings` (env var name → value)."""
    from tests.support.pki import tls_env

    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith(("SUARA_", "OTEL_"))}
    env.update(tls_env())
    # The internal listeners on any free port: parallel tests must not meet on the default ones.
    env.update(SUARA_TALLY_INTERNAL_PORT="0", SUARA_AGGREGATE_INTERNAL_PORT="0")
    env.update({f"SUARA_{s}_METRICS_PORT": "0" for s in ("TALLY", "AGGREGATE", "PUBLISH")})
    env.update({k: str(v) for k, v in settings.items()})
    return env


async def run_suara(*args: str, env: Mapping[str, str], cwd: Path) -> Completed:
    """Run `suara ARGS…` to completion without blocking the event loop (an in-process tally keeps serving)."""
    proc = await asyncio.create_subprocess_exec(
        str(SUARA),
        *args,
        env=dict(env),
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Completed(proc.returncode, out.decode(), err.decode())


class LogTail:
    """Collects a child's stderr line by line as it arrives; lets a test await a given log event."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.lines: list[str] = []
        self.closed = False
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._pump(stream))

    async def _pump(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            async with self._changed:
                self.lines.append(raw.decode(errors="replace"))
                self._changed.notify_all()
        async with self._changed:
            self.closed = True
            self._changed.notify_all()

    def events(self) -> list[dict[str, Any]]:
        """The lines that are JSON objects (structured log records), in order."""
        records = []
        for line in self.lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def has_event(self, name: str) -> bool:
        return any(r.get("event") == name for r in self.events())

    async def wait_for_event(self, name: str, within_s: float) -> None:
        """Until a JSON record with "event": name is logged; fails if the stream ends first."""
        async with self._changed:
            ended = self._changed.wait_for(lambda: self.has_event(name) or self.closed)
            await within(ended, f"a {name!r} event logged", within_s, detail=self.text)
        assert self.has_event(name), f"stderr ended without a {name!r} event:\n{self.text()}"

    async def finish(self) -> None:
        await self._task

    def text(self) -> str:
        return "".join(self.lines)


class Child:
    """One `suara …` subprocess with its stderr tailed."""

    def __init__(self, command: str, proc: asyncio.subprocess.Process, log: LogTail) -> None:
        self.command = command
        self.proc = proc
        self.log = log

    @classmethod
    async def spawn(
        cls, *args: str, env: Mapping[str, str], cwd: Path, stdout: int = asyncio.subprocess.DEVNULL
    ) -> Child:
        proc = await asyncio.create_subprocess_exec(
            str(SUARA),
            *args,
            env=dict(env),
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stdout,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        return cls(f"suara {' '.join(args)}", proc, LogTail(proc.stderr))

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def assert_alive(self) -> None:
        assert self.alive, f"`{self.command}` exited with {self.proc.returncode}:\n{self.log.text()}"

    async def kill(self) -> int:
        """SIGKILL (no handler, no cleanup, no goodbye) unless it has exited; its exit status."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        code = await self.proc.wait()
        await self.log.finish()
        return code

    async def terminate(self, within_s: float) -> int:
        """SIGTERM, then the exit status, which must come within `within_s`."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), within_s)
        except TimeoutError:
            pytest.fail(f"still running {within_s}s after SIGTERM:\n{self.log.text()[-3000:]}")
        await self.log.finish()
        return code


@contextlib.asynccontextmanager
async def running(
    *args: str, env: Mapping[str, str], cwd: Path, stdout: int = asyncio.subprocess.DEVNULL
) -> AsyncIterator[Child]:
    """`suara ARGS…` for the block; killed at its end unless the test stopped it."""
    child = await Child.spawn(*args, env=env, cwd=cwd, stdout=stdout)
    try:
        yield child
    finally:
        await child.kill()
