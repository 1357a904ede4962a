"""Child processes of `suara up`: started in order, watched, restarted with backoff, stopped in reverse.

Each child is one `suara …` command in its own session, hence its own process group (a terminal's
Ctrl-C reaches only the supervisor, which then stops the children in order instead of all of them at
once; a session rather than `process_group=0`, which uvloop does not take). Its stdout and
stderr go through a pipe to LOG_DIR/<name>.log, which the supervisor rotates by size (<name>.log.1
is the newest older part; at most `backups` of them are kept, so a child's logs never take more
than (backups + 1) × max_bytes), or straight to the supervisor's stdout (`to_stdout`: containers,
whose runtime keeps the logs). A child is "up" once its probe says so (gRPC health, an HTTP 200);
one that exits while the supervisor is not stopping is restarted, on the same address, after a
backoff, and `child_restarted` is logged. The pids are kept in a JSON file, so an operator (or a
test) can find them, and a later supervisor can clean up after one that was killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from suara.runtime.backoff import Backoff
from suara.runtime.tls import ClientTls, open_channel

log = structlog.stdlib.get_logger("suara.supervisor")

Probe = Callable[[], Awaitable[bool]]
# What a child runs: the CLI of this very interpreter, so a venv's `suara up` starts that venv's services.
SUARA_COMMAND = (sys.executable, "-m", "cli")
PROBE_INTERVAL_S = 0.1
# A child that stayed up this long crashed for a new reason: its restart backoff starts over.
STABLE_AFTER_S = 30.0
# Reconnect quickly while a child is starting (gRPC's default first backoff is a whole second).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


class ChildFailed(RuntimeError):
    """A child exited, or never became ready, while being started."""


def note(message: str) -> None:
    """Progress for the operator, on stderr: stdout carries only the ready line (and the demo's report)."""
    print(message, file=sys.stderr, flush=True)


async def serve_until_signalled(
    work: Callable[[asyncio.Event], Coroutine[Any, Any, int]], *, name: str, stopping: str
) -> int:
    """Run `work(stop)` to its end, or until SIGINT/SIGTERM: then `stopping` is said and it is cancelled.

    `work` gets the event a signal sets, so it can serve until then. A signal at any point (while
    starting, while serving) cancels it, and its own finally blocks stop what it started, in order;
    the exit code is `work`'s, 0 after a signal, or 1 when a child failed for good.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(work(stop), name=name)
    signalled = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, signalled}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            note(stopping)
            task.cancel()
        try:
            return await task
        except asyncio.CancelledError:
            return 0
    except ChildFailed as exc:
        note(f"{name.replace('-', ' ')}: {exc}")
        return 1
    finally:
        signalled.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


@dataclass(frozen=True)
class ChildSpec:
    name: str
    args: Sequence[str]  # after `python -m command`
    env: Mapping[str, str]
    probe: Probe
    cwd: Path | None = None
    # The whole command line of a program that is not suara (Envoy, SeaweedFS, nginx); `args` is then unused.
    command: Sequence[str] | None = None
    # False: a child that exits stays down (`suara cluster`: a host that dies is not brought back by magic).
    restart: bool = True
    grace_s: float | None = None  # its own grace before SIGKILL (None: the supervisor's)


class RotatingLog:
    """An append-only log file that is rotated before it grows beyond `max_bytes`, keeping `backups`
    older parts (<path>.1 the newest). Lines stay whole unless one alone is longer than `max_bytes`."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered: what a child wrote is in the file at once (the supervisor quotes its tail).
        self._file = path.open("ab", buffering=0)
        self._size = self._file.tell()

    def write(self, data: bytes) -> None:
        while data:
            room = self.max_bytes - self._size
            if len(data) <= room:
                self._file.write(data)
                self._size += len(data)
                return
            cut = data.rfind(b"\n", 0, max(room, 0)) + 1
            if cut == 0 and self._size == 0:
                cut = room  # one line longer than a whole file: cut it rather than grow beyond the bound
            self._file.write(data[:cut])
            data = data[cut:]
            self._rotate()

    def _rotate(self) -> None:
        self._file.close()
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.backups:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._file = self.path.open("wb", buffering=0)
        self._size = 0

    def close(self) -> None:
        self._file.close()


async def _pump(stream: asyncio.StreamReader, sink: RotatingLog) -> None:
    while chunk := await stream.read(1 << 16):
        sink.write(chunk)


@dataclass
class _Child:
    spec: ChildSpec
    proc: asyncio.subprocess.Process | None = None
    pump: asyncio.Task[None] | None = None
    started_at: float = 0.0
    restarts: int = 0
    watcher: asyncio.Task[None] | None = None
    backoff: Backoff = field(default_factory=lambda: Backoff(base_s=0.5, cap_s=10.0))


def grpc_health_probe(address: str, service: str, tls: ClientTls | None) -> Probe:
    """SERVING from grpc.health.v1.Health/Check for `service` at `address` (over `tls`; None: plaintext)."""

    async def probe() -> bool:
        async with open_channel(address, tls, options=CHANNEL_OPTIONS) as channel:
            try:
                response = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=0.5, wait_for_ready=True
                )
            except grpc.aio.AioRpcError:
                return False  # not listening yet, or listening before its health is set (NOT_FOUND)
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    return probe


def http_probe(host: str, port: int, path: str = "/") -> Probe:
    """An HTTP 200 for GET `path`: the site server is up and the page is there to serve."""

    async def probe() -> bool:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 0.5)
        except (OSError, TimeoutError):
            return False
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), 2.0)
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return status.split(b" ")[1:2] == [b"200"]

    return probe


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_suara(pid: int) -> bool:
    """Whether `pid` still runs suara (and is not an unrelated process that got a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"suara" in cmdline


def default_state(pids: Mapping[str, int]) -> dict[str, Any]:
    return {"pid": os.getpid(), "children": dict(pids)}


def recorded_pids(recorded: Mapping[str, Any]) -> list[int]:
    """The children's pids in a state file: `suara up`'s up.json (services and site) or the plain form."""
    pids = [int(p) for p in recorded.get("children", {}).values()]
    for entries in recorded.get("services", {}).values():
        pids += [int(e["pid"]) for e in entries if e.get("pid")]
    if (site := recorded.get("site")) and site.get("pid"):
        pids.append(int(site["pid"]))
    return pids


def clean_up_after(pid_file: Path) -> list[int]:
    """Children a previous supervisor left running when it was killed: SIGKILLed. Their pids.

    Refuses (SystemExit) when that supervisor is still running: two of them must not share a data dir.
    """
    try:
        recorded = json.loads(pid_file.read_text())
    except (OSError, ValueError):
        return []
    owner = int(recorded.get("pid", 0))
    if owner and owner != os.getpid() and _alive(owner) and _is_suara(owner):
        raise SystemExit(f"another `suara up` (pid {owner}) is running on this data directory ({pid_file})")
    killed = []
    for pid in recorded_pids(recorded):
        if _alive(int(pid)) and _is_suara(int(pid)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid), signal.SIGKILL)  # its own group: anything it started goes too
            killed.append(int(pid))
    pid_file.unlink(missing_ok=True)
    return killed


class Supervisor:
    """Starts children one by one (each must be ready before the next), restarts them, stops them in reverse."""

    def __init__(
        self,
        log_dir: Path,
        pid_file: Path,
        *,
        grace_s: float = 10.0,
        startup_timeout_s: float = 120.0,
        state: Callable[[Mapping[str, int]], dict[str, Any]] = default_state,
        log_max_bytes: int = 100_000_000,
        log_backups: int = 5,
        log_to_stdout: bool = False,
    ) -> None:
        """`state` makes what `pid_file` holds from the children's pids (rewritten whenever one starts);
        it must keep "pid" (this process) and the children's pids findable by `recorded_pids`.
        `log_*`: each child's log file is rotated beyond `log_max_bytes`, keeping `log_backups` older
        parts; with `log_to_stdout` children write to this process's stdout instead."""
        self.log_dir = log_dir
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        self.log_to_stdout = log_to_stdout
        self._logs: dict[str, RotatingLog] = {}
        self.pid_file = pid_file
        self.state = state
        self.grace_s = grace_s
        self.startup_timeout_s = startup_timeout_s
        self._children: list[_Child] = []
        self._stopping = False

    def pids(self) -> dict[str, int]:
        return {c.spec.name: c.proc.pid for c in self._children if c.proc is not None and c.proc.returncode is None}

    def log_file(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    async def start(self, spec: ChildSpec) -> int:
        """Start a child and wait until its probe passes; its pid. ChildFailed if it exits or times out first."""
        child = _Child(spec)
        self._children.append(child)
        try:
            await self._spawn(child)
            await self._until_ready(child)
        except ChildFailed:
            await self._terminate(child)
            raise
        child.watcher = asyncio.create_task(self._watch(child), name=f"watch-{spec.name}")
        assert child.proc is not None
        return child.proc.pid

    async def run_once(self, name: str, args: Sequence[str], env: Mapping[str, str], cwd: Path | None = None) -> int:
        """A one-shot command (e.g. `publish rebuild`), logged like a child; its exit code."""
        proc, pump = await self._exec(name, args, env, cwd)
        try:
            code = await proc.wait()
            if pump is not None:
                await pump  # everything it wrote is in the file before its caller reads it
            return code
        finally:
            if proc.returncode is None:  # cancelled: do not leave it behind
                proc.kill()
                await proc.wait()
            if pump is not None:
                pump.cancel()

    async def stop(self) -> None:
        """Reverse start order: SIGTERM, then SIGKILL after the grace period. Restarts stop first."""
        self._stopping = True
        for child in self._children:
            if child.watcher is not None:
                child.watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await child.watcher
        for child in reversed(self._children):
            await self._terminate(child)
            if child.pump is not None:
                # The pipe ends with the child (what it wrote last is kept), unless something it started
                # still holds it open.
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(child.pump, 5.0)
        for sink in self._logs.values():
            sink.close()
        self.pid_file.unlink(missing_ok=True)

    # --- internals --------------------------------------------------------------------------------

    async def _exec(
        self,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str],
        cwd: Path | None,
        command: Sequence[str] | None = None,
    ) -> tuple[asyncio.subprocess.Process, asyncio.Task[None] | None]:
        """Start `suara ARGS` (or `command`) with its output going to `name`'s log (and the task copying it there)."""
        argv = list(command) if command is not None else [*SUARA_COMMAND, *args]
        if self.log_to_stdout:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=dict(env), cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
                stdout=None, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            return proc, None
        if name not in self._logs:  # one per name, kept across restarts: the file's size stays known
            self._logs[name] = RotatingLog(self.log_file(name), self.log_max_bytes, self.log_backups)
        proc = await asyncio.create_subprocess_exec(
            *argv, env=dict(env), cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        assert proc.stdout is not None
        return proc, asyncio.create_task(_pump(proc.stdout, self._logs[name]), name=f"log-{name}")

    async def _spawn(self, child: _Child) -> None:
        spec = child.spec
        child.proc, child.pump = await self._exec(spec.name, spec.args, spec.env, spec.cwd, spec.command)
        child.started_at = time.monotonic()
        where = "stdout" if self.log_to_stdout else str(self.log_file(spec.name))
        log.info("child_started", name=spec.name, pid=child.proc.pid, log=where)
        self._write_pids()

    async def _until_ready(self, child: _Child) -> None:
        assert child.proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.startup_timeout_s
        # A bounded poll: a child binds its port at a moment we cannot await from outside.
        while True:
            if child.proc.returncode is not None:
                raise ChildFailed(
                    f"{child.spec.name} exited with {child.proc.returncode} while starting; "
                    f"see {self.log_file(child.spec.name)}:\n{self._tail(child.spec.name)}"
                )
            if await child.spec.probe():
                return
            if loop.time() > deadline:
                raise ChildFailed(f"{child.spec.name} not ready after {self.startup_timeout_s:.0f}s")
            await asyncio.sleep(PROBE_INTERVAL_S)

    async def _watch(self, child: _Child) -> None:
        """Restart the child whenever it exits, until the supervisor stops."""
        while True:
            assert child.proc is not None
            code = await child.proc.wait()
            if self._stopping:
                return
            if not child.spec.restart:
                log.warning("child_exited", name=child.spec.name, exit_code=code, restart_in_s=None)
                self._write_pids()
                return
            uptime = time.monotonic() - child.started_at
            if uptime > STABLE_AFTER_S:
                child.backoff.reset()
            delay = child.backoff.next_delay()
            log.warning("child_exited", name=child.spec.name, exit_code=code, uptime_s=round(uptime, 1),
                        restart_in_s=round(delay, 2))  # fmt: skip
            await asyncio.sleep(delay)
            child.restarts += 1
            await self._spawn(child)
            try:
                await self._until_ready(child)
            except ChildFailed as exc:
                log.error("child_restart_failed", name=child.spec.name, restarts=child.restarts, error=str(exc))
                await self._terminate(child)
                continue
            log.warning(
                "child_restarted", name=child.spec.name, exit_code=code, restarts=child.restarts, pid=child.proc.pid
            )

    async def _terminate(self, child: _Child) -> None:
        proc = child.proc
        if proc is None or proc.returncode is not None:
            return
        grace_s = self.grace_s if child.spec.grace_s is None else child.spec.grace_s
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            log.warning("child_killed", name=child.spec.name, pid=proc.pid, grace_s=grace_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            code = await proc.wait()
        log.info("child_stopped", name=child.spec.name, pid=proc.pid, exit_code=code)

    def write_state(self) -> None:
        """Rewrite the state file now (it is rewritten whenever a child starts)."""
        self._write_pids()

    def _write_pids(self) -> None:
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state(self.pids()), indent=2) + "\n")
        tmp.replace(self.pid_file)  # atomically: a reader never sees half a file

    def _tail(self, name: str, lines: int = 20) -> str:
        try:
            text = self.log_file(name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
