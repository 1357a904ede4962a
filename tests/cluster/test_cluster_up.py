"""Issue 15, `suara cluster`: the whole topology on this machine, a load test through it while one tally
host is cut off from the database hosts and healed (drill 6), then another tally host dies (drill 2),
then one of the two aggregate hosts (drill 3), then the database primary's host (drill 1: a synchronous
standby is promoted), then `suara cluster down`.

Everything is real and out of process: `suara cluster up` (three etcd + Patroni + PostgreSQL hosts,
SeaweedFS, two aggregate hosts, two tally hosts behind Envoy, publish active and standby, nginx in front of the
bucket) and `suara loadtest`, unchanged, against its ready line. The oracle is the load test's own: what
tally acknowledged to its devices, checked against every published totals file (read through nginx) at
every level and every sampled TPS's file — an acknowledged form lost, or one counted twice, is a
mismatch. Envoy's own view (its admin /clusters) shows the dead host out of rotation. Last, no process
cluster.json listed may outlive `suara cluster down`, nor its bridge and network namespaces.

As root each host is a network namespace of its own (`--hosts auto`), and the partition is real: the
kernel refuses the tally host's packets to the database hosts (cli/netns.py). The cut-off tally host's
own health answer (NOT_SERVING) and Envoy's view are read from outside it. Without root the hosts are
loopback addresses and the partition step cannot be made: the figures say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cli.cluster import ENVOY
from cli.netns import HostNetwork, netns_possible, tag_of
from cli.nginx import NGINX
from cli.patroni import etcd_binary, patroni_installed
from cli.seaweedfs import weed_binary
from suara.client import service_names
from suara.runtime.tls import ClientTls, open_channel
from tests.support.envoy import envoy_health
from tests.support.waiting import poll_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(etcd_binary() is None, reason="etcd is not installed (Debian etcd-server: make system-deps)"),
    pytest.mark.skipif(not patroni_installed(), reason="patroni is not installed (the dev extras: make install)"),
    pytest.mark.skipif(not weed_binary().exists(), reason="SeaweedFS is not installed (make install)"),
    pytest.mark.skipif(not ENVOY.exists(), reason="Envoy is not installed (make install)"),
    pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed (make system-deps)"),
    pytest.mark.skipif(
        bool(os.environ.get("DATABASE_URL")), reason="the cluster runs its own databases (run without DATABASE_URL)"
    ),
]

UP_S = 600.0  # three database hosts and seven others, on two busy cores
SCALE = "0.4"  # of the cluster's ~1,000 synthetic TPS: ~900 forms
RATE = "40"  # open loop, forms a second: the night lasts long enough to kill a host in the middle of it
CUT_AFTER = 60  # forms stored before a tally host is cut off from the database hosts
WHILE_CUT = 30  # forms stored through the other tally host while the cut-off one is out
KILL_AFTER = 40  # forms stored after the healed host is back, before the other tally host dies
KILL_AGGREGATE_AFTER = 150  # forms stored after that, before an aggregate host dies
KILL_DATABASE_AFTER = 100  # forms stored after that, before the database primary's host dies
UNAVAILABLE_TARGET_S = 30.0  # the bound on a database failover as ingest sees it
PHOTOS = "0.05"  # share of TPS whose forms carry photos: they go to the photo bucket, the site links them
LOADTEST_S = 1200.0


def _env(data: Path) -> dict[str, str]:
    """This process's environment without suara's settings (the cluster makes its own PKI and ports)."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith(("SUARA_", "OTEL_"))}
    return {**env, "SUARA_DATA_DIR": str(data), "SUARA_TALLY_PORT": "0"}


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]


def _cmdline(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


@contextlib.asynccontextmanager
async def _cluster_up(data: Path, log: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, dict[str, str]]]:
    """`suara cluster up`, until its ready line (parsed); SIGKILL at the end only if the test left it running."""
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli", "cluster", "up", "--data-dir", str(data), "--http-port", "0",
            "--tally-hosts", "2", env=_env(data), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=err,
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), UP_S)).decode()
        assert line.startswith("ready "), f"no ready line: {line!r}\n{_tail(log)}"
        yield proc, dict(part.split("=", 1) for part in line.split()[1:])
    finally:
        if proc.returncode is None:
            # The test failed before `cluster down`: stop it as `down` would, so nothing outlives the test.
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 180)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_cluster_up_loadtest_through_partitions_and_host_deaths_then_down(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    data = tmp_path / "cluster"
    async with _cluster_up(data, tmp_path / "cluster-up.log") as (up, ready):
        state: dict[str, Any] = json.loads((data / "cluster.json").read_text())
        hosts = {h["name"]: h for h in state["hosts"]}
        api_tls = ssl.create_default_context(cafile=state["database_tls"]["ca"])  # Patroni's API: HTTPS only
        database_hosts = [hosts[name] for name in ("db1", "db2", "db3")]
        # As root (CI) the hosts are namespaces, on loopback addresses otherwise (`--hosts auto`).
        partition_why_not = netns_possible()
        assert state["network"]["mode"] == ("netns" if partition_why_not is None else "loopback")
        # The ready line is the one `suara up` prints; Envoy and nginx are where it points.
        assert set(ready) == {"tally", "site", "admin_key", "ca"}
        assert ready["tally"] == state["tally"] and ready["site"] == state["site"]
        assert ready["ca"] == state["ca"] and ready["admin_key"] == state["admin_key"]
        expected = {"db1", "db2", "db3", "tally1", "tally2", "aggregate1", "aggregate2", "edge1", "storage1"}
        assert expected | {"publish1", "publish2"} <= set(hosts)
        assert len({h["address"] for h in hosts.values()}) == len(hosts)  # each host its own address
        for name in ("db1", "db2", "db3"):
            assert set(hosts[name]["pids"]) == {"etcd", "patroni", "postgres"}, hosts[name]
        every_pid = {p for h in hosts.values() for p in (*h["pids"].values(), *h["all_pids"])}
        seen = {pid: _cmdline(pid) for pid in every_pid}
        mains = {p for h in hosts.values() for p in h["pids"].values()}
        assert all(seen[pid] for pid in mains), "a role's process cluster.json lists is not running"
        # A host's other processes come and go (PostgreSQL's backends and autovacuum workers).
        seen = {pid: cmd for pid, cmd in seen.items() if cmd}
        envoy_admin = hosts["edge1"]["envoy_admin"]
        victim = hosts["tally2"]
        assert envoy_health(envoy_admin) == {
            hosts["tally1"]["grpc"]: "healthy",
            victim["grpc"]: "healthy",
        }

        report = tmp_path / "loadtest.json"
        with (tmp_path / "loadtest.log").open("wb") as out:
            loadtest = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cli", "loadtest", "--target", ready["tally"],
                "--admin-target", hosts["tally1"]["internal"], "--admin-key", ready["admin_key"], "--ca", ready["ca"],
                "--site", ready["site"], "--scale", SCALE, "--rate", RATE, "--concurrency", "32", "--photos", PHOTOS,
                "--settle-timeout", "600", "--report", str(report),
                env=_env(data), stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
            )  # fmt: skip
        try:
            db = await asyncpg.connect(state["database_url"])
            try:

                def stored(n: int) -> Callable[[], Any]:
                    async def enough() -> bool:
                        return bool(await db.fetchval("SELECT count(*) FROM tally.submission") >= n)

                    return enough

                def loadtest_running() -> None:
                    assert loadtest.returncode is None, (tmp_path / "loadtest.log").read_text()[-4000:]

                async def count() -> int:
                    return int(await db.fetchval("SELECT count(*) FROM tally.submission"))

                # Drill 6: tally1 cut off from every database host, then healed (needs the namespaces).
                partition: dict[str, Any] = {"not run": partition_why_not}
                aggregate_partition: dict[str, Any] = {"not run": partition_why_not}
                if partition_why_not is None:
                    tls = ClientTls(await asyncio.to_thread(Path(ready["ca"]).read_bytes))
                    partition = await _partition_drill(state, hosts, envoy_admin, db, count, loadtest_running, tls)
                    # Then aggregate1 cut off from the database hosts: the relay delivers through aggregate2.
                    aggregate_partition = await _aggregate_partition(state, db, loadtest_running)
                await poll_until(
                    stored(await count() + KILL_AFTER), "forms stored after the heal", LOADTEST_S, loadtest_running
                )
                stored_at_kill = await count()
                # Drill 2: the tally host dies, every process of it at once, no goodbye.
                killed_at = time.monotonic()
                _kill_host(victim)

                async def out_of_rotation() -> bool:
                    flags = await asyncio.to_thread(envoy_health, envoy_admin)
                    return flags.get(victim["grpc"]) != "healthy" and flags.get(hosts["tally1"]["grpc"]) == "healthy"

                await poll_until(out_of_rotation, "the dead tally host out of Envoy's rotation", 30)
                out_after_s = time.monotonic() - killed_at
                # Drill 3: an aggregate host dies the same way; the relay goes on to the other one.
                await poll_until(
                    stored(stored_at_kill + KILL_AGGREGATE_AFTER), "forms stored after the tally host died",
                    LOADTEST_S, loadtest_running,
                )  # fmt: skip
                stored_at_aggregate_kill = await db.fetchval("SELECT count(*) FROM tally.submission")
                _kill_host(hosts["aggregate1"])
                # Drill 1: the database primary's host dies (its etcd member, Patroni, every PostgreSQL process).
                await poll_until(
                    stored(stored_at_aggregate_kill + KILL_DATABASE_AFTER), "forms stored after aggregate1 died",
                    LOADTEST_S, loadtest_running,
                )  # fmt: skip
                primary = await asyncio.to_thread(_database_leader, database_hosts, api_tls)
                assert primary is not None, "no database host answers as the leader"
                synchronous = await asyncio.to_thread(_synchronous_standbys, primary, api_tls)
                stored_at_database_kill = await db.fetchval("SELECT count(*) FROM tally.submission")
                database_killed_at = time.time()  # wall clock: compared with the commits' received_at
                _kill_host(primary, with_descendants=True)
            finally:
                db.terminate()  # it may have been the dead primary's
            code = await asyncio.wait_for(loadtest.wait(), LOADTEST_S)
        finally:
            if loadtest.returncode is None:
                loadtest.kill()
                await loadtest.wait()
        text = (tmp_path / "loadtest.log").read_text(errors="replace")
        assert code == 0, text[-4000:]
        result = json.loads(report.read_text())
        verification = result["verification"]
        outcomes, errors = result["outcomes"], result["errors"]
        acknowledged = sum(n for outcome, n in outcomes.items() if outcome != "DUPLICATE")
        lost_in_aggregate, twice = await _lost_and_twice(state["database_url"])
        survivors = [h for h in database_hosts if h["name"] != primary["name"]]
        promoted = await asyncio.to_thread(_database_leader, survivors, api_tls)
        assert promoted is not None and promoted["name"] in synchronous, (promoted, synchronous)
        db = await asyncpg.connect(state["database_url"])
        try:
            # The database's own clock of ingest: every commit's received_at (set inside its transaction).
            commits = await db.fetch(
                "SELECT extract(epoch FROM received_at)::float8 AS at FROM tally.submission"
                " WHERE received_at > to_timestamp($1) ORDER BY received_at",
                database_killed_at,
            )
            rows, distinct = await db.fetchrow("SELECT count(*), count(DISTINCT payload_sha256) FROM tally.submission")
        finally:
            await db.close()
        times = [database_killed_at, *(r["at"] for r in commits)]
        unavailable_s = max(b - a for a, b in itertools.pairwise(times))
        # The operator's audit recomputes the chain and every signature on the promoted primary.
        audit = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli", "audit", "verify", "--json", env=_audit_env(data, state), cwd=tmp_path,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        audit_out, audit_err = await asyncio.wait_for(audit.communicate(), 300)
        audit_report = json.loads(audit_out) if audit.returncode in (0, 1) else {"ok": False}
        record_property(
            "figures",
            {
                "drill": "suara cluster: the database primary's host SIGKILLed mid-load (drill 1)",
                "primary_killed": primary["name"],
                "promoted": promoted["name"],
                "stored_when_killed": stored_at_database_kill,
                "acknowledged_forms_lost": verification["mismatch_count"],
                "forms_counted_twice": rows - distinct,
                "published_totals_vs_oracle": "exact" if verification["exact"] else "MISMATCH",
                "seconds_unavailable": round(unavailable_s, 1),
                "worst_latency_ms": result["latency_ms"]["max"],
                "audit_verify": "OK" if audit_report["ok"] else "FAILED",
            },
        )
        record_property(
            "figures",
            {
                "drill": "suara cluster: a tally host cut off from the database hosts and healed, then the "
                "other tally host, then an aggregate host, SIGKILLed mid-load (2 of each)",
                "hosts": state["network"]["mode"],
                "tally_host_cut_off": partition,
                "aggregate_host_cut_off": aggregate_partition,
                "forms_acknowledged": acknowledged,
                "stored_when_tally_host_killed": stored_at_kill,
                "stored_when_aggregate_host_killed": stored_at_aggregate_kill,
                "acknowledged_forms_lost": verification["mismatch_count"],
                "acknowledged_forms_aggregate_lacks": lost_in_aggregate,
                "forms_counted_twice": twice,
                "published_totals_vs_oracle": "exact" if verification["exact"] else "MISMATCH",
                "areas_checked": verification["areas_checked"],
                "tps_files_checked": verification["tps_checked"],
                "out_of_envoy_rotation_after_s": round(out_after_s, 2),
                "worst_latency_ms": result["latency_ms"]["max"],
                "calls_answered_unavailable": errors.get("UNAVAILABLE", 0),
                "errors_seen_by_devices": errors,
                "outcomes": outcomes,
                "throughput_per_s": result["throughput"],
            },
        )
        assert verification["exact"] and verification["mismatch_count"] == 0
        assert (lost_in_aggregate, twice) == (0, 0)
        assert result["settled"] is True
        assert rows == distinct
        assert audit.returncode == 0, (audit_out + audit_err).decode()[-4000:]
        assert (audit_report["ok"], audit_report["records"]) == (True, rows), audit_report
        assert unavailable_s <= UNAVAILABLE_TARGET_S, unavailable_s
        # The calls in flight on the dead host may be answered UNAVAILABLE, or UNKNOWN when their stream
        # is reset mid-call through Envoy (the SDK sends both again; none was lost, above);
        # the malformed forms INVALID_ARGUMENT, on purpose. Nothing else.
        assert set(errors) <= {"INVALID_ARGUMENT", "UNAVAILABLE", "UNKNOWN"}, errors
        # Photos: in the photo bucket, read through nginx at the site's own /foto/, byte for byte.
        db = await asyncpg.connect(state["database_url"])
        try:
            photos = await db.fetch("SELECT sha256, content_type FROM tally.photo ORDER BY sha256 LIMIT 3")
        finally:
            await db.close()
        assert photos, "the load test sent photos; tally kept none"
        for photo in photos:
            body, content_type = await asyncio.to_thread(
                _get, f"{ready['site']}foto/{photo['sha256'][:2]}/{photo['sha256']}"
            )
            assert hashlib.sha256(body).hexdigest() == photo["sha256"]
            assert content_type == photo["content_type"]

        down = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli", "cluster", "down", "--data-dir", str(data), env=_env(data),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        said, _ = await asyncio.wait_for(down.communicate(), 240)
        assert down.returncode == 0, said.decode()
        assert await asyncio.wait_for(up.wait(), 30) == 0
    still = sorted(pid for pid, cmd in seen.items() if _cmdline(pid) == cmd)
    assert still == [], f"processes of the cluster alive after `suara cluster down`: {still}"
    assert not (data / "cluster.json").exists()
    if state["network"]["mode"] == "netns":
        left = await asyncio.to_thread(_network_listing)
        assert state["network"]["tag"] not in left, f"the cluster's network outlived `suara cluster down`:\n{left}"


async def _tally_health(address: str, tls: ClientTls) -> str:
    """The tally host's own answer to a health check, asked from outside it."""
    async with open_channel(address, tls) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service_names.TALLY.full_name), timeout=2
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def _partition_drill(
    state: dict[str, Any],
    hosts: dict[str, Any],
    envoy_admin: str,
    db: asyncpg.Connection,
    count: Callable[[], Any],
    loadtest_running: Callable[[], None],
    tls: ClientTls,
) -> dict[str, Any]:
    """Drill 6: tally1 cut off from the database hosts mid-load; it says NOT_SERVING, Envoy drains it, the
    forms go on through tally2; healed, tally1 says SERVING and Envoy takes it back. Its figures."""
    cut, other = hosts["tally1"], hosts["tally2"]
    databases = [h["name"] for h in state["hosts"] if "postgres" in h["roles"]]
    network = HostNetwork.from_description(state["network"], {h["name"]: h["address"] for h in state["hosts"]})
    await poll_until(lambda: _at_least(count, CUT_AFTER), f"{CUT_AFTER} forms stored", LOADTEST_S, loadtest_running)

    async def flags() -> dict[str, str]:
        return await asyncio.to_thread(envoy_health, envoy_admin)

    stored_at_cut, db_clock_at_cut = await count(), await db.fetchval("SELECT clock_timestamp()")
    cut_at = time.monotonic()
    await asyncio.to_thread(network.cut, "tally1", databases)
    try:

        async def not_serving() -> bool:
            return await _tally_health(cut["grpc"], tls) == "NOT_SERVING"

        await poll_until(not_serving, "the cut-off tally host reporting NOT_SERVING", 30, loadtest_running)
        not_serving_after_s = time.monotonic() - cut_at

        async def drained() -> bool:
            seen = await flags()
            return seen.get(cut["grpc"]) != "healthy" and seen.get(other["grpc"]) == "healthy"

        await poll_until(drained, "the cut-off tally host drained by Envoy", 30, loadtest_running)
        drained_after_s = time.monotonic() - cut_at
        # Ingest goes on, through the other tally host alone.
        await poll_until(
            lambda: _at_least(count, stored_at_cut + WHILE_CUT), "forms stored through the other tally host",
            LOADTEST_S, loadtest_running,
        )  # fmt: skip
        stored_while_cut = await count() - stored_at_cut
    finally:
        await asyncio.to_thread(network.heal, "tally1", databases)
    healed_at = time.monotonic()

    async def back() -> bool:
        return (await flags()).get(cut["grpc"]) == "healthy" and await _tally_health(cut["grpc"], tls) == "SERVING"

    await poll_until(back, "the healed tally host back in Envoy's rotation", 60, loadtest_running)
    back_after_s = time.monotonic() - healed_at
    # The longest the whole cluster stored nothing, from the cut until the healed host was back: tally's own
    # receipt times, in the database.
    gap = await db.fetchval(
        "SELECT coalesce(extract(epoch FROM max(gap)), 0) FROM (SELECT t - lag(t) OVER (ORDER BY t) AS gap FROM "
        "(SELECT received_at AS t FROM tally.submission WHERE received_at >= $1 UNION ALL SELECT $1) s) g",
        db_clock_at_cut,
    )
    return {
        "stored_when_cut": stored_at_cut,
        "stored_through_the_other_host_while_cut": stored_while_cut,
        "not_serving_after_s": round(not_serving_after_s, 2),
        "drained_by_envoy_after_s": round(drained_after_s, 2),
        "back_in_rotation_after_heal_s": round(back_after_s, 2),
        "longest_cluster_wide_gap_between_stored_forms_s": round(float(gap), 2),
    }


async def _aggregate_partition(
    state: dict[str, Any], db: asyncpg.Connection, loadtest_running: Callable[[], None]
) -> dict[str, Any]:
    """aggregate1 cut off from the database hosts mid-load, then healed: forms go on being delivered (through
    aggregate2; a call aggregate1 fails is resent). Exactness is the load test's verification, at the end."""
    databases = [h["name"] for h in state["hosts"] if "postgres" in h["roles"]]
    network = HostNetwork.from_description(state["network"], {h["name"]: h["address"] for h in state["hosts"]})

    async def delivered() -> int:
        return int(await db.fetchval("SELECT count(*) FROM tally.outbox WHERE delivered_at IS NOT NULL"))

    delivered_at_cut, db_clock_at_cut = await delivered(), await db.fetchval("SELECT clock_timestamp()")
    cut_at = time.monotonic()
    await asyncio.to_thread(network.cut, "aggregate1", databases)
    try:
        await poll_until(
            lambda: _at_least(delivered, delivered_at_cut + WHILE_CUT), "forms delivered while aggregate1 is cut off",
            60, loadtest_running,
        )  # fmt: skip
        took = time.monotonic() - cut_at
        delivered_while_cut = await delivered() - delivered_at_cut
    finally:
        await asyncio.to_thread(network.heal, "aggregate1", databases)
    db_clock_at_heal = await db.fetchval("SELECT clock_timestamp()")
    # The longest the relays delivered nothing while aggregate1 was cut off (the database's clock), from the cut.
    gap = await db.fetchval(
        "SELECT coalesce(extract(epoch FROM max(gap)), 0) FROM (SELECT t - lag(t) OVER (ORDER BY t) AS gap FROM "
        "(SELECT delivered_at AS t FROM tally.outbox WHERE delivered_at BETWEEN $1 AND $2 UNION ALL SELECT $1) s) g",
        db_clock_at_cut,
        db_clock_at_heal,
    )
    return {
        "delivered_when_cut": delivered_at_cut,
        "longest_gap_between_deliveries_while_cut_s": round(float(gap), 2),
        "delivered_while_cut": delivered_while_cut,
        f"seconds_to_deliver_{WHILE_CUT}_while_cut": round(took, 2),
    }


async def _lost_and_twice(database_url: str) -> tuple[int, int]:
    """From the database, as tests/cluster/test_aggregate_drill.py counts them: (TPS, contest) pairs whose
    version tally acknowledged aggregate does not hold, and TPS the nation counts beyond those aggregate holds."""
    db = await asyncpg.connect(database_url)
    try:
        lost = await db.fetchval(
            "SELECT count(*) FROM tally.current c LEFT JOIN aggregate.tps_result r USING (tps, contest)"
            " WHERE r.version IS DISTINCT FROM c.version"
        )
        nation = await db.fetch(
            "SELECT contest, tps_reported, tps_quarantined FROM aggregate.area_total WHERE area = ''"
        )
        held = dict(await db.fetch("SELECT contest, count(*) FROM aggregate.tps_result GROUP BY contest"))
    finally:
        await db.close()
    twice = sum(max(0, n["tps_reported"] + n["tps_quarantined"] - held.get(n["contest"], 0)) for n in nation)
    return int(lost), twice


async def _at_least(count: Callable[[], Any], n: int) -> bool:
    return bool(await count() >= n)


def _network_listing() -> str:
    """Every network namespace and every link of this machine."""
    listings = (["ip", "netns", "list"], ["ip", "-o", "link", "show"])
    return "".join(subprocess.run(c, capture_output=True, text=True, check=True).stdout for c in listings)


def _get(url: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.read(), reply.headers["Content-Type"]


def _audit_env(data: Path, state: dict[str, Any]) -> dict[str, str]:
    """`suara audit verify` as an operator runs it against the cluster: its database (multi-host, over TLS)
    and its photo store (the photo bucket on the storage host, over HTTPS with the cluster's CA)."""
    from cli.cluster import PHOTO_BUCKET, PHOTO_PREFIX, SITE_BUCKET

    keys = json.loads((data / "s3.key").read_text())
    return {
        **_env(data),
        "DATABASE_URL": state["database_url"],
        "SUARA_PHOTO_STORE": f"s3://{PHOTO_BUCKET}/{PHOTO_PREFIX}",
        "SUARA_PHOTO_STORE_ENDPOINT_URL": state["bucket"].split(f"/{SITE_BUCKET}/", 1)[0],
        "AWS_ACCESS_KEY_ID": keys["access_key"],
        "AWS_SECRET_ACCESS_KEY": keys["secret_key"],
        "AWS_CA_BUNDLE": state["ca"],
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


def _database_leader(hosts: list[dict[str, Any]], tls: ssl.SSLContext) -> dict[str, Any] | None:
    """The database host whose Patroni answers 200 on /leader."""
    from cli.patroni import http_status

    return next((h for h in hosts if http_status(f"{h['patroni_api']}/leader", 2.0, tls) == 200), None)


def _synchronous_standbys(leader: dict[str, Any], tls: ssl.SSLContext) -> set[str]:
    """The hosts Patroni lists as synchronous standbys: the only ones it may promote."""
    from cli.patroni import http_json

    members = http_json(f"{leader['patroni_api']}/cluster", 2.0, tls)["members"]
    return {m["name"] for m in members if m.get("role") == "sync_standby"}


def _kill_host(host: dict[str, Any], with_descendants: bool = False) -> None:
    """Every process of `host` SIGKILLed at once, as a machine losing power. `with_descendants`: the children
    its main processes have now too (PostgreSQL's backends started after cluster.json was written), all
    stopped first so that none reacts to another's death."""
    from cli.patroni import descendants

    victims = [*host["pids"].values(), *host["all_pids"]]
    if with_descendants:
        victims += [child for pid in host["pids"].values() for child in descendants(pid)]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _processes_naming(data: Path) -> list[int]:
    """Every process whose command line names `data` (etcd, Patroni and PostgreSQL do)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if str(data).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


async def test_a_signal_while_the_database_hosts_start_stops_what_started(tmp_path: Path) -> None:
    data = tmp_path / "cluster"
    with (tmp_path / "cluster-up.log").open("wb") as err:
        up = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli", "cluster", "up", "--data-dir", str(data), env=_env(data),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=err,
        )  # fmt: skip
    try:

        async def patroni_started() -> bool:
            return (data / "db" / "db3" / "patroni.log").exists()

        def running() -> None:
            assert up.returncode is None, _tail(tmp_path / "cluster-up.log")

        await poll_until(patroni_started, "the database hosts starting", 120, running)
        assert _processes_naming(data)
        up.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(up.wait(), 240) == 0, _tail(tmp_path / "cluster-up.log")
    finally:
        if up.returncode is None:
            up.kill()
            await up.wait()
    assert up.stdout is not None
    assert await up.stdout.read() == b""  # never ready
    assert _processes_naming(data) == []
    if netns_possible() is None:  # the bridge and the namespaces made before the database hosts: gone too
        assert tag_of(data) not in await asyncio.to_thread(_network_listing)
