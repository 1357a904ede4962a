"""`suara demo`: the system as it stands, started on this machine with a small simulated election.

It starts PostgreSQL (embedded unless DATABASE_URL), migrates, loads the
registry, serves aggregate, tally (whose relay feeds aggregate) and publish
(which writes the static site to SUARA_SITE_DIR), serves that site over HTTP,
enrolls devices through the admin API, sends every TPS of a small sample its
C.Hasil form — with the resends, corrections and inconsistent forms of a real
night — shows the national totals as aggregate rolled them up, checks the
published national file says the same, verifies the chain, and keeps serving
until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import random
import signal
import sys
from dataclasses import replace
from typing import Any

import grpc

from suara.cli.progress import Progress
from suara.runtime.service_auth import ServiceCredential
from suara.runtime.settings import Settings


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="start what exists of suara and feed it a small simulated election",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--scale", type=float, default=0.001, help="synthetic TPS scale for the registry (default 0.001)")
    p.add_argument("--forms", type=int, default=400, help="how many TPS send a form (default 400)")
    p.add_argument("--seed", type=int, default=2024, help="seed of the simulation (default 2024)")
    p.add_argument("--once", action="store_true", help="stop after the simulation instead of serving until Ctrl-C")
    p.add_argument("--http-port", type=int, help="port of the public site (default: SUARA_HTTP_PORT, or any free one)")
    p.set_defaults(handler=run_demo)


async def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    from services.aggregate.server import AggregateApp
    from services.publish.http import serve_site
    from services.publish.server import PublishApp
    from services.tally.credentials import AdminCredential, create_admin_credential
    from services.tally.server import TallyApp
    from suara.cli.db import migrate_url
    from suara.registry.loader import load_registry
    from suara.runtime.database import connect, database_url
    from suara.runtime.service_auth import issue_service_credential

    with database_url(settings) as url:
        where = "DATABASE_URL" if settings.database_url else f"embedded PostgreSQL in {settings.data_dir}"
        say(f"database: {where}")
        applied = await migrate_url(url)
        say(f"migrations: {len(applied)} applied" if applied else "migrations: up to date")
        async with connect(url) as conn:
            tps_count = await conn.fetchval("SELECT count(*) FROM registry.tps")
            if not tps_count:
                say(f"registry: loading the real area hierarchy and synthetic TPS at scale {args.scale} …")
                summary = await load_registry(conn, synthetic_scale=args.scale, seed=args.seed)
                tps_count = summary.tps
            say(f"registry: {tps_count:,} TPS")
            admin_path = settings.data_dir / "admin.key.json"
            if not admin_path.exists():
                (await create_admin_credential(conn, "demo")).save(admin_path)
            admin = AdminCredential.load(admin_path)
            tps = [
                r["code"]
                for r in await conn.fetch("SELECT code FROM registry.tps ORDER BY random() LIMIT $1", args.forms)
            ]
            choices = [
                r["id"]
                for r in await conn.fetch("SELECT id FROM registry.choice WHERE contest = 'ppwp' ORDER BY nomor_urut")
            ]

        relay_key = settings.data_dir / "relay.key.json"
        reader_key = settings.data_dir / "publish.key.json"
        async with connect(url) as conn:
            if not relay_key.exists():
                (await issue_service_credential(conn, "relay", "writer")).save(relay_key)
            if not reader_key.exists():
                (await issue_service_credential(conn, "publish", "reader")).save(reader_key)

        aggregate = await AggregateApp.create(replace(settings, aggregate_port=_port(settings, "aggregate")), url)
        await aggregate.start()
        aggregate_address = f"{settings.aggregate_host}:{aggregate.port}"
        say(f"aggregate: serving gRPC on {aggregate_address} (service credentials required)")
        tally_settings = replace(
            settings,
            tally_port=_port(settings, "tally"),
            relay_credential=str(relay_key),
            aggregate_address=aggregate_address,
        )
        app = await TallyApp.create(tally_settings, url)
        await app.start()
        address = f"{settings.tally_host}:{app.port}"
        say(f"tally: serving gRPC on {address}, relaying to aggregate (try `grpcurl -plaintext {address} list`)")
        publish_settings = replace(
            settings,
            publish_port=_free_or(settings.publish_host, settings.publish_port),
            aggregate_address=aggregate_address,
            tally_address=address,
            publish_credential=str(reader_key),
            publish_interval_s=0.5,
        )
        publish = await PublishApp.create(publish_settings, url)
        await publish.start()
        say(f"publish: writing the static site to {settings.site_dir}/")
        http_port = args.http_port if args.http_port is not None else _free_or("127.0.0.1", settings.http_port)
        site = serve_site(settings.site_dir, "127.0.0.1", http_port)
        site_url = await site.__aenter__()
        say(f"site: {site_url}/ (the public page; its JSON is under /pemilu, /wilayah and /suara)")
        try:
            outcomes = await simulate(address, admin.token, tps, choices, args.seed)
            say("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
            assert app.relay is not None
            await app.relay.wait_caught_up()
            national = await show_totals(aggregate_address, ServiceCredential.load(reader_key), choices)
            published = await _published_national(publish, url, settings)
            snapshot = published.pop("snapshot")
            same = published == national
            say(
                f"site: snapshot {snapshot} published; its national totals "
                + ("equal aggregate's" if same else f"DIFFER from aggregate's: {published} vs {national}")
            )
            from services.tally.audit import verify_chain

            async with connect(url) as conn:
                report = await verify_chain(conn)
            verdict = "OK" if report.ok and same else "BROKEN"
            say(
                f"verification: {verdict} — chain {'intact' if report.ok else 'BROKEN'}, {report.records:,} records, "
                f"head {report.head_hash[:16]}…; site {'matches' if same else 'DOES NOT MATCH'} aggregate"
            )
            say(f"credentials: admin {admin_path}, relay {relay_key}, reader {reader_key}")
            if not args.once:
                say(f"serving until Ctrl-C — open {site_url}/")
                await _wait_for_signal()
        finally:
            await site.__aexit__(None, None, None)
            await publish.stop(1.0)
            await app.stop(settings.shutdown_grace_s)
            await aggregate.stop(settings.shutdown_grace_s)
        return 0 if report.ok and same else 1


def _port(settings: Settings, service: str) -> int:
    host, port = (
        (settings.tally_host, settings.tally_port)
        if service == "tally"
        else (settings.aggregate_host, settings.aggregate_port)
    )
    from suara.runtime.embedded import free_port

    return port if port and _port_free(host, port) else free_port()


async def _published_national(publish: Any, url: str, settings: Settings) -> dict[str, Any]:
    """Once publish has caught up with aggregate: the national numbers of the published ppwp file."""
    import json

    from suara.runtime.database import connect

    async with connect(url) as conn:
        head = await conn.fetchval("SELECT sequence FROM aggregate.head")
        while await conn.fetchval("SELECT sequence FROM publish.cursor") < head:
            await publish.wait_cycles(1)
    doc = json.loads((settings.site_dir / "pemilu/hhcw/ppwp.json").read_bytes())
    pointer = json.loads((settings.site_dir / "suara/snapshot.json").read_bytes())
    chart = {k: v for k, v in doc["chart"].items() if k != "persen"}
    return {"votes": chart, "progres": doc["progres"]["progres"], "snapshot": pointer["snapshot"]}


def _free_or(host: str, port: int) -> int:
    from suara.runtime.embedded import free_port

    return port if port and _port_free(host, port) else free_port()


async def show_totals(address: str, reader: ServiceCredential, choices: list[str]) -> dict[str, Any]:
    """The national row as aggregate serves it to publish: votes per choice and TPS progress."""
    from suara.client.aggregate_stub import aggregate_stub
    from suara.runtime.service_auth import ServiceAuthClientInterceptor
    from suara.v1 import aggregate_pb2

    async with grpc.aio.insecure_channel(address, interceptors=[ServiceAuthClientInterceptor(reader)]) as channel:
        view = await aggregate_stub(channel).GetArea(aggregate_pb2.GetAreaRequest(area="", contest="ppwp"))
    row = view.area
    shown = ", ".join(f"{c}: {row.totals.votes.get(c, 0):,}" for c in choices)
    say(f"nasional (ppwp): {shown}; valid {row.totals.suara_sah:,}")
    say(
        f"progress: {row.tps_reported:,} of {row.tps_total:,} TPS counted, {row.tps_quarantined:,} quarantined "
        f"(change sequence {view.sequence})"
    )
    return {"votes": {c: row.totals.votes.get(c, 0) for c in choices}, "progres": row.tps_reported}


def say(message: str) -> None:
    print(message, flush=True)


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def simulate(address: str, admin_token: str, tps: list[str], choices: list[str], seed: int) -> dict[str, int]:
    """One form per TPS, plus what election night brings: resends, corrections, inconsistent forms."""
    from suara.client.stubs import tally_stub
    from suara.election.signing import DeviceKey
    from suara.v1 import form_pb2, tally_pb2

    rng = random.Random(seed)
    outcomes: collections.Counter[str] = collections.Counter()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = tally_stub(channel)
        auth = (("authorization", f"Bearer {admin_token}"),)
        keys = [DeviceKey.generate(code) for code in tps]
        progress = Progress("enrolling devices", len(keys))
        for i, key in enumerate(keys, 1):
            await stub.EnrollDevice(
                tally_pb2.EnrollDeviceRequest(tps=key.tps, public_key=key.public_key, label="demo"), metadata=auth
            )
            progress.update(i)
        progress.done(f"{len(keys)} devices")

        def form(key: DeviceKey, version: int, broken: bool) -> tally_pb2.SubmitRequest:
            f = form_pb2.CHasilForm(tps=key.tps, contest="ppwp", version=version)
            dpt = rng.randint(150, 300)
            users = rng.randint(dpt // 2, dpt)
            invalid = rng.randint(0, 6)
            left = users - invalid
            # Around the 2024 national shares (24.9 / 58.6 / 16.5 %), varying from TPS to TPS.
            shares = [max(0.01, s + rng.gauss(0, 0.08)) for s in (0.249, 0.586, 0.165)[: len(choices)]]
            shares += [1.0] * (len(choices) - len(shares))
            remaining = sum(shares)
            for choice, share in zip(choices[:-1], shares, strict=False):
                f.votes[choice] = min(left, round(left * share / remaining))
                left -= f.votes[choice]
                remaining -= share
            f.votes[choices[-1]] = left
            f.suara_sah, f.suara_tidak_sah, f.suara_total = users - invalid, invalid, users
            for triple, j in (("pemilih_dpt", dpt), ("pengguna_dpt", users), ("pengguna_dptb", 0),
                              ("pengguna_non_dpt", 0), ("pengguna_total", users)):  # fmt: skip
                getattr(f, triple).j, getattr(f, triple).l, getattr(f, triple).p = j, j // 2, j - j // 2
            if broken:
                f.votes[choices[0]] += 7  # an officer's slip: the choices no longer add up to suara_sah
            payload = f.SerializeToString()
            return tally_pb2.SubmitRequest(
                form=form_pb2.SignedForm(payload=payload, signature=key.sign(payload), device_id=key.device_id)
            )

        progress = Progress("election night", len(keys))
        done = 0

        async def station(key: DeviceKey) -> None:
            nonlocal done
            broken = rng.random() < 0.05
            first = form(key, 1, broken)
            sends = [first, first] if rng.random() < 0.1 else [first]  # a lost reply: the device resends
            if broken or rng.random() < 0.03:
                sends.append(form(key, 2, False))  # the correction, signed as version 2
            for request in sends:
                try:
                    response = await stub.Submit(request)
                    outcomes[tally_pb2.Outcome.Name(response.outcome)] += 1
                except grpc.aio.AioRpcError as err:
                    outcomes[err.code().name] += 1
            done += 1
            progress.update(done)

        sem = asyncio.Semaphore(32)

        async def bounded(key: DeviceKey) -> None:
            async with sem:
                await station(key)

        await asyncio.gather(*(bounded(k) for k in keys))
        progress.done(f"{len(keys)} TPS reported")
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return dict(outcomes)
