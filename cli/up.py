"""`suara up`: the whole system on this machine, each service in its own process, until SIGINT/SIGTERM.

In order:
  1. PostgreSQL: DATABASE_URL, or the embedded server in DATA_DIR/pgdata, which this process runs
     (the services are given its URL; none of them starts a server of its own).
  2. The migrations.
  3. The registry, when it holds no TPS: the real areas and synthetic TPS at --scale (with --seed).
  4. A private CA in DATA_DIR/pki (`suara pki`), and what is missing of: a server certificate per
     service for 127.0.0.1 and localhost, and client certificates, each with its key in one file in
     DATA_DIR: admin.pem (an admin: EnrollDevice on tally's internal address), relay.pem (tally's
     relay, a writer of aggregate) and publish.pem (publish, a reader of aggregate and tally). With
     SUARA_INSECURE=1 (plaintext, debugging only) token credentials instead: admin.key.json,
     relay.key.json, publish.key.json. tally's chain key (SUARA_TALLY_CHAIN_KEY, by default
     chain.key.json), which signs the published heads.
  5. The services, each a `suara …` child process serving TLS 1.3, each waited for until it serves
     (gRPC health): aggregate, tally (whose relay feeds aggregate), publish (`publish run`, writing
     the site to --site-dir), and the site server (`publish serve`: waited for until it serves index.html).
  6. One line on stdout, exactly:
       ready tally=HOST:PORT site=URL admin_key=PATH ca=PATH
     tally= is its public address (devices); ca= the CA every client verifies the services by
     (empty with SUARA_INSECURE).
  7. Serve. A child that exits is restarted on the same port, after a backoff, and `child_restarted`
     is logged (structured, on stderr). On SIGINT or SIGTERM the children are stopped in reverse
     order (site, publish, tally, aggregate; SIGTERM, then SIGKILL after SUARA_SHUTDOWN_GRACE_S + 5 s),
     then the embedded PostgreSQL, and `suara up` exits 0.

Each service's port is chosen once, before it starts, so a restart keeps its address: the setting
(SUARA_TALLY_PORT, SUARA_TALLY_INTERNAL_PORT, SUARA_AGGREGATE_PORT, SUARA_AGGREGATE_INTERNAL_PORT,
SUARA_PUBLISH_PORT, SUARA_HTTP_PORT, SUARA_*_METRICS_PORT) or the flag when that port is free, otherwise
(or with 0) any free port. Every service process serves Prometheus metrics on a port of its own
(several tally processes too; none with SUARA_METRICS=off). Children log JSON lines to
DATA_DIR/logs/<name>.log, rotated by size (SUARA_LOG_MAX_BYTES, keeping SUARA_LOG_BACKUPS older files),
or to stdout (--log-to-stdout). DATA_DIR/up.json describes the running system (complete once the ready
line is out; rewritten when a child restarts):
  {"pid": N, "ca": PATH, "admin_key": PATH, "database_url": URL, "site": {"url", "dir", "pid"},
   "services": {"tally": [{"address", "internal", "pid", "metrics"}, …], "aggregate": […], "publish": […]}}
("metrics": the process's http://HOST:PORT/metrics, docs/metrics.md)
A later `suara up` on the same directory stops children a SIGKILLed one left behind (from up.json),
and refuses to start while another one is running. Other settings (SUARA_LOG_LEVEL,
SUARA_TALLY_MAX_IN_FLIGHT …) pass through to the children.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc

from cli.registry import _scale, _seed
from cli.supervisor import (
    ChildSpec,
    Supervisor,
    clean_up_after,
    grpc_health_probe,
    http_probe,
    note,
    serve_until_signalled,
)
from suara.runtime.auth.certificate import CertCredential
from suara.runtime.settings import Settings
from suara.runtime.tls import ClientTls, open_channel

DEFAULT_SCALE = 0.001
DEFAULT_SEED = 2024


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "up",
        help="start PostgreSQL, tally, aggregate, publish and the site, each as its own process",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_up_arguments(p)
    p.set_defaults(handler=run_up)


def add_up_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, help="local state: database, keys, logs (default: SUARA_DATA_DIR)")
    p.add_argument("--site-dir", type=Path, help="where publish writes the site (default: SUARA_SITE_DIR)")
    p.add_argument(
        "--http-port", type=int, help="port of the public site, 0 for any free one (default: SUARA_HTTP_PORT)"
    )
    p.add_argument(
        "--tally-port", type=int, help="port of tally's gRPC API, 0 for any free one (default: SUARA_TALLY_PORT)"
    )
    p.add_argument(
        "--tally-processes", type=int, default=1, metavar="N",
        help="tally processes sharing its port (SO_REUSEPORT: the kernel spreads connections), one per core "
        "is the most that helps (default 1)",
    )  # fmt: skip
    p.add_argument(
        "--scale", type=_scale, default=DEFAULT_SCALE, metavar="F",
        help=f"synthetic TPS scale when the registry is empty (1.0 ≈ 823,000 TPS; default {DEFAULT_SCALE})",
    )  # fmt: skip
    p.add_argument(
        "--seed",
        type=_seed,
        default=DEFAULT_SEED,
        metavar="N",
        help=f"seed of the synthetic TPS (default {DEFAULT_SEED})",
    )
    p.add_argument(
        "--log-to-stdout",
        action="store_true",
        help="the services log to this command's stdout instead of DATA_DIR/logs (containers; "
        "default: SUARA_LOG_TO_STDOUT)",
    )


@dataclass(frozen=True)
class System:
    """What `suara up` started, and where."""

    database_url: str
    data_dir: Path
    site_dir: Path
    tally_address: str
    aggregate_address: str
    publish_address: str
    site_url: str
    admin_key: Path
    relay_key: Path
    reader_key: Path
    supervisor: Supervisor = field(repr=False)
    ca: Path | None = None  # None: plaintext (SUARA_INSECURE)
    tally_internal: str = ""  # tally's internal (mutual TLS) address: admins, publish
    aggregate_internal: str = ""  # aggregate's internal address: the relay, publish
    settings: Settings | None = field(default=None, repr=False)  # what the children were given
    metrics: Mapping[str, str] = field(default_factory=dict)  # each process's /metrics URL, by its name

    def ready_line(self) -> str:
        ca = "" if self.ca is None else str(self.ca)
        return f"ready tally={self.tally_address} site={self.site_url} admin_key={self.admin_key} ca={ca}"

    def client_tls(self, credential: Path | None = None) -> ClientTls | None:
        """TLS to reach a service as a client of this system (with `credential`'s certificate when given)."""
        if self.ca is None:
            return None
        identity = None if credential is None else CertCredential.load(credential).key_pair
        return ClientTls(self.ca.read_bytes(), identity)

    def channel(self, address: str, credential: Path | None = None) -> grpc.aio.Channel:
        """A channel to one of this system's services, proving `credential` (a service's; see
        `admin_metadata` for the admin's): its certificate, or in plaintext mode its signed token."""
        from suara.runtime.auth.client import ServiceAuthClientInterceptor
        from suara.runtime.auth.credential import ServiceCredential

        if self.ca is not None or credential is None or credential == self.admin_key:
            return open_channel(address, self.client_tls(credential))
        return open_channel(
            address, None, interceptors=[ServiceAuthClientInterceptor(ServiceCredential.load(credential))]
        )

    def admin_metadata(self) -> tuple[tuple[str, str], ...]:
        """What an admin's call carries: nothing under TLS (the certificate proves it), a bearer token in plaintext."""
        from suara.runtime.auth.admin import AdminCredential

        return () if self.ca is not None else AdminCredential.load(self.admin_key).metadata()


_CHOSEN: set[int] = set()  # the kernel may hand one free port out twice before anyone binds it


def _port(host: str, wanted: int | None) -> int:
    """`wanted` when it is free; any free port when it is 0, None or taken; never one chosen before."""
    from cli.embedded import free_port

    if wanted and wanted not in _CHOSEN:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is no obstacle
            try:
                s.bind((host, wanted))
                _CHOSEN.add(wanted)
                return wanted
            except OSError:
                note(f"port {wanted} on {host} is busy: taking a free one")
    return free_port("127.0.0.1", _CHOSEN)  # checked on loopback: `host` may be no address of ours yet


@contextlib.asynccontextmanager
async def running_system(
    args: argparse.Namespace, settings: Settings, extra_env: Mapping[str, str] | None = None
) -> AsyncIterator[System]:
    """Everything `suara up` starts, serving; stopped in reverse order when the block exits (or is cancelled)."""
    from cli.actor import operator
    from cli.db import migrate_url
    from cli.embedded import database_url, service_database_env
    from services.publish.server import published_sequence
    from services.tally.access import create_admin_credential
    from services.tally.server import chain_key_path, load_chain_key
    from suara.client import service_names
    from suara.registry.catalog import fetch_election_id
    from suara.registry.loader import load_registry
    from suara.registry.summary import tps_count
    from suara.runtime.auth.store import issue_service_credential
    from suara.runtime.database import connect

    data_dir = (args.data_dir or settings.data_dir).resolve()
    site_dir = (args.site_dir or settings.site.dir).resolve()
    settings = replace(settings, data_dir=data_dir, site=replace(settings.site, dir=site_dir))
    data_dir.mkdir(parents=True, exist_ok=True)
    # One photo store for every tally process (and every restart): an absolute path, whatever their cwd.
    photos = settings.tally.photo_store or str(data_dir / "photos")
    photos = photos if photos.startswith("s3://") else str(Path(photos).resolve())  # noqa: ASYNC240  (once, at start)
    pid_file = data_dir / "up.json"
    if killed := clean_up_after(pid_file):
        note(f"stopped {len(killed)} process(es) a killed `suara up` left running: {killed}")
    insecure = settings.tls.insecure

    with database_url(settings) as url:
        note(f"database: {'DATABASE_URL' if settings.database.url else f'embedded PostgreSQL in {data_dir}/pgdata'}")
        applied = await migrate_url(url)
        note(f"migrations: {len(applied)} applied" if applied else "migrations: up to date")
        suffix = ".key.json" if insecure else ".pem"
        admin_key, relay_key, reader_key = (data_dir / f"{n}{suffix}" for n in ("admin", "relay", "publish"))
        hosts = sorted({"127.0.0.1", "localhost", settings.tally.host, settings.aggregate.host, settings.publish.host})
        async with connect(url) as conn:
            tps = await tps_count(conn)
            if not tps:
                note(f"registry: loading the real areas and synthetic TPS at scale {args.scale} …")
                tps = (await load_registry(conn, synthetic_scale=args.scale, seed=args.seed)).tps
            election = await fetch_election_id(conn)
            note(f"registry: {tps:,} TPS, election {election or '(unnamed)'}")
            tls_env, ca = (
                ({}, None) if insecure else local_pki(data_dir, hosts, election, admin_key, relay_key, reader_key)
            )
            if insecure and not admin_key.exists():
                (await create_admin_credential(conn, "suara up", actor=operator())).save(admin_key)
            if insecure and not relay_key.exists():
                (await issue_service_credential(conn, "relay", "writer")).save(relay_key)
            if insecure and not reader_key.exists():
                (await issue_service_credential(conn, "publish", "reader")).save(reader_key)
        # Made here, before any tally process starts, so its several processes never race to make it.
        chain_key = load_chain_key(settings)
        note(f"chain key: {chain_key.key_id} in {chain_key_path(settings)}")
        note(f"photos: {photos} (not in `suara db backup`)")
        async with connect(url) as conn:
            # A site directory lost while the database kept publish's cursor: publish would only write
            # what changes next, so the whole site is rebuilt first.
            rebuild = not (site_dir / "index.html").exists() and await published_sequence(conn) > 0

        # Every port is chosen now, once: a restarted child must come back on the same address.
        tally_port = settings.tally.port if args.tally_port is None else args.tally_port
        tally = (settings.tally.host, _port(settings.tally.host, tally_port))
        tally_internal = _port(settings.tally.host, settings.tally.internal_port)
        aggregate = (settings.aggregate.host, _port(settings.aggregate.host, settings.aggregate.port))
        aggregate_internal = _port(settings.aggregate.host, settings.aggregate.internal_port)
        publish = (settings.publish.host, _port(settings.publish.host, settings.publish.port))
        http = ("127.0.0.1", _port("127.0.0.1", settings.site.http_port if args.http_port is None else args.http_port))
        tally_address, aggregate_address, publish_address = (f"{h}:{p}" for h, p in (tally, aggregate, publish))
        processes = max(1, getattr(args, "tally_processes", 1))
        # Each process its own /metrics port (tally processes share their gRPC port, never this one).
        metrics_ports = {
            "aggregate": _port(aggregate[0], settings.aggregate.metrics_port),
            **{
                _tally_name(i): _port(tally[0], settings.tally.metrics_port)
                for i in range(processes)
            },
            "publish": _port(publish[0], settings.publish.metrics_port),
        } if settings.metrics_on else {}  # fmt: skip
        metrics_hosts = {"tally": tally[0], "aggregate": aggregate[0], "publish": publish[0]}
        metrics_urls = {
            name: metrics_url(metrics_hosts[name.split("-")[0]], port) for name, port in metrics_ports.items()
        }
        tally_inside, aggregate_inside = f"{tally[0]}:{tally_internal}", f"{aggregate[0]}:{aggregate_internal}"
        env = {
            **os.environ,
            **service_database_env(settings),  # each service as its own role (DATABASE_URL passes through)
            "SUARA_DATA_DIR": str(data_dir),
            "SUARA_PHOTO_STORE": photos,
            "SUARA_SITE_DIR": str(site_dir),
            "SUARA_TALLY_HOST": tally[0],
            "SUARA_TALLY_PORT": str(tally[1]),
            "SUARA_TALLY_INTERNAL_PORT": str(tally_internal),
            "SUARA_AGGREGATE_HOST": aggregate[0],
            "SUARA_AGGREGATE_PORT": str(aggregate[1]),
            "SUARA_AGGREGATE_INTERNAL_PORT": str(aggregate_internal),
            "SUARA_AGGREGATE_ADDRESS": aggregate_inside,
            "SUARA_TALLY_ADDRESS": tally_inside,
            "SUARA_PUBLISH_HOST": publish[0],
            "SUARA_PUBLISH_PORT": str(publish[1]),
            "SUARA_HTTP_PORT": str(http[1]),
            "SUARA_RELAY_CREDENTIAL": str(relay_key),
            "SUARA_PUBLISH_CREDENTIAL": str(reader_key),
            "SUARA_LOG_FORMAT": "json",  # the log files are read by tools, not on a terminal
            **tls_env,
            **(extra_env or {}),
        }
        probe_tls = None if ca is None else ClientTls(ca.read_bytes())
        log_dir = data_dir / "logs"
        site_url = f"http://{http[0]}:{http[1]}/"
        addresses = {
            "tally": {"address": tally_address, "internal": tally_inside},
            "aggregate": {"address": aggregate_address, "internal": aggregate_inside},
            "publish": {"address": publish_address},
        }

        def state(pids: Mapping[str, int]) -> dict[str, Any]:
            """up.json: where everything is, for operators and tools (one entry per process)."""
            services: dict[str, list[dict[str, Any]]] = {name: [] for name in addresses}
            for name, pid in pids.items():
                service = name.split("-")[0]
                if service in services and name != "publish-rebuild":
                    entry = {**addresses[service], "pid": pid}
                    if name in metrics_urls:
                        entry["metrics"] = metrics_urls[name]
                    services[service].append(entry)
            return {
                "pid": os.getpid(),
                "ca": None if ca is None else str(ca),
                "admin_key": str(admin_key),
                "database_url": url,
                "site": {"url": site_url, "dir": str(site_dir), "pid": pids.get("site")},
                "services": services,
            }

        # A child gets its own grace (the same setting) and a little more to close its pool before SIGKILL.
        to_stdout = settings.log.to_stdout or getattr(args, "log_to_stdout", False)
        supervisor = Supervisor(
            log_dir, pid_file, grace_s=settings.shutdown_grace_s + 5.0, state=state,
            log_max_bytes=settings.log.max_bytes, log_backups=settings.log.backups, log_to_stdout=to_stdout,
        )  # fmt: skip
        logs = "stdout" if to_stdout else f"{log_dir}/<service>.log, rotated by size"
        note(f"logs: {logs} (JSON lines); processes and addresses: {pid_file}")
        try:
            started = time.perf_counter()
            await supervisor.start(
                ChildSpec(
                    "aggregate",
                    ["aggregate", "serve"],
                    _with_metrics_port(env, "AGGREGATE", metrics_ports.get("aggregate")),
                    grpc_health_probe(aggregate_address, service_names.AGGREGATE.full_name, probe_tls),
                )
            )
            note(f"aggregate: serving gRPC on {aggregate_address}")
            tally_env = {**env, "SUARA_TALLY_SHARED_PORT": "1"} if processes > 1 else env
            for i in range(processes):  # every one relays too; one relay is active, the others stand by
                await supervisor.start(
                    ChildSpec(
                        _tally_name(i),
                        ["tally", "serve"],
                        _with_metrics_port(tally_env, "TALLY", metrics_ports.get(_tally_name(i))),
                        grpc_health_probe(tally_address, service_names.TALLY.full_name, probe_tls),
                    )
                )
            note(f"tally: serving gRPC on {tally_address}, its relay feeding aggregate")
            if rebuild:
                note(f"publish: {site_dir} has no site but the database was published before: rebuilding it …")
                if await supervisor.run_once("publish-rebuild", ["publish", "rebuild"], env) != 0:
                    raise SystemExit(f"`suara publish rebuild` failed; see {supervisor.log_file('publish-rebuild')}")
            await supervisor.start(
                ChildSpec(
                    "publish",
                    ["publish", "run"],
                    _with_metrics_port(env, "PUBLISH", metrics_ports.get("publish")),
                    grpc_health_probe(publish_address, service_names.PUBLISH.full_name, probe_tls),
                )
            )
            note(f"publish: writing the site to {site_dir}/ (status gRPC on {publish_address})")
            site_args = ["publish", "serve", "--site-dir", str(site_dir), "--http-port", str(http[1])]
            await supervisor.start(ChildSpec("site", site_args, env, http_probe(*http)))
            note(f"site: serving {site_url} ({time.perf_counter() - started:.1f}s to start the services)")
            if metrics_urls:
                note("metrics (Prometheus): " + ", ".join(f"{name} {u}" for name, u in metrics_urls.items()))
            supervisor.write_state()
            yield System(
                url, data_dir, site_dir, tally_address, aggregate_address, publish_address, site_url,
                admin_key, relay_key, reader_key, supervisor, ca, tally_inside, aggregate_inside,
                replace(settings, database=replace(settings.database, url=url)), metrics_urls,
            )  # fmt: skip
        finally:
            await supervisor.stop()
            if not settings.database.url:
                note("database: stopping the embedded PostgreSQL")


def _tally_name(i: int) -> str:
    return "tally" if i == 0 else f"tally-{i + 1}"


def metrics_url(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"


def _with_metrics_port(env: Mapping[str, str], service: str, port: int | None) -> dict[str, str]:
    """`env` with the child's own metrics port (chosen once: a restart serves on the same one)."""
    return {**env, f"SUARA_{service}_METRICS_PORT": str(port)} if port is not None else dict(env)


def local_pki(
    data_dir: Path, hosts: list[str], election: str, admin_key: Path, relay_key: Path, reader_key: Path
) -> tuple[dict[str, str], Path]:
    """The PKI of a local system in DATA_DIR/pki, made or completed: the children's TLS settings and the CA.

    Kept across runs (clients keep trusting the same CA); what is missing is issued, and a certificate is
    issued again when it expires within RENEW_BEFORE, when a service's does not name every host it now
    binds, or when a client's names another election than the registry's (after `suara registry load
    --election-id`)."""
    from cryptography import x509

    from cli.actor import operator
    from suara.runtime.pki import PkiDir, election_of, renewal_due, split_bundle
    from suara.runtime.secrets_file import write_secret

    pki = PkiDir(data_dir / "pki", actor=operator())
    if pki.init():
        note(f"pki: a new private CA in {pki.path}")
    env = {"SUARA_CA_FILE": str(pki.ca_cert), "SUARA_CRL_FILE": str(pki.crl)}
    for service in ("tally", "aggregate", "publish"):
        path = pki.cert(service)
        if (
            not path.exists()
            or not _names_hosts(path, hosts)
            or renewal_due(x509.load_pem_x509_certificate(path.read_bytes()))
        ):
            pki.issue_server(service, hosts)
        env[f"SUARA_{service.upper()}_TLS_CERT"] = str(pki.cert(service))
        env[f"SUARA_{service.upper()}_TLS_KEY"] = str(pki.key(service))
    # Client certificates by names of their own: `pki.cert(service)` is that service's server certificate.
    for bundle, name, role in ((admin_key, "admin", "admin"), (relay_key, "tally-relay", "writer"),
                               (reader_key, "publish-reader", "reader")):  # fmt: skip
        held = split_bundle(bundle.read_bytes()).certificate if bundle.exists() else None
        if held is not None and election_of(held) == election and not renewal_due(held):
            continue
        pair = pki.issue_client(name, role, election=election)
        write_secret(bundle, pair.bundle().decode())
    return env, pki.ca_cert


def _names_hosts(cert_path: Path, hosts: list[str]) -> bool:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    named = {str(v) for v in san.get_values_for_type(x509.DNSName)}
    named |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    return set(hosts) <= named


async def serve_until_signal(
    args: argparse.Namespace,
    settings: Settings,
    then: Callable[[System], Awaitable[tuple[int, bool]]] | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> int:
    """Start the system, print the ready line, run `then` (exit code, keep serving?), serve until a signal.

    A signal at any point (while starting, during `then`, while serving) unwinds it all in order;
    the exit code is then 0, or `then`'s when it had finished.
    """

    async def lifecycle(stop: asyncio.Event) -> int:
        async with running_system(args, settings, extra_env) as system:
            print(system.ready_line(), flush=True)
            code, keep = (0, True) if then is None else await then(system)
            if keep:
                # A signal while serving ends it with `then`'s code; the block still unwinds in order.
                with contextlib.suppress(asyncio.CancelledError):
                    await stop.wait()
            return code

    # A signal wherever the task is (starting, in `then`, serving): cancelling unwinds the block in
    # order, since its finally stops the children and then the database.
    return await serve_until_signalled(
        lifecycle, name="suara-up", stopping="stopping: site, publish, tally, aggregate, then the database"
    )


async def run_up(args: argparse.Namespace, settings: Settings) -> int:
    return await serve_until_signal(args, settings)
