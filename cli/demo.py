"""`suara demo`: `suara up` (each service its own process) plus a short simulated election.

It starts everything `suara up` starts, in the same order and with the same flags (PostgreSQL,
embedded unless DATABASE_URL; the migrations; the registry; aggregate, tally whose relay feeds
aggregate, publish writing the static site, and the site server), prints the same ready line, then
enrolls devices through the admin API and sends every TPS of a small sample its C.Hasil form, with
the resends, corrections and inconsistent forms of a real night. Once the relay has delivered
everything it shows the national totals as aggregate rolled them up, checks that the published
national file says the same, verifies the chain, prints `verification: OK …` and the site URL, and
keeps serving until Ctrl-C (or stops at once with --once).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import random
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from cli.progress import Progress
from cli.up import System, add_up_arguments, serve_until_signal
from suara.runtime.settings import Settings

# Bound on the relay delivering the election and publish catching up with aggregate (seconds, not minutes).
CATCH_UP_TIMEOUT_S = 120.0
POLL_INTERVAL_S = 0.1


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="`suara up` plus a short simulated election",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_up_arguments(p)
    p.add_argument("--forms", type=int, default=400, help="how many TPS send a form (default 400)")
    p.add_argument(
        "--photos",
        type=int,
        default=60,
        metavar="N",
        help="how many of those TPS also send the three photos of their paper form, drawn from its numbers "
        "(default 60; about 0.13 s of CPU and 1 MB each)",
    )
    p.add_argument("--once", action="store_true", help="stop after the simulation instead of serving until Ctrl-C")
    p.set_defaults(handler=run_demo)


async def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    from suara.runtime.settings import PublishSettings

    # publish looks for changes twice a second, so the site follows the election closely (unless set otherwise).
    default = settings.publish.interval_s == PublishSettings().interval_s
    extra = {"SUARA_PUBLISH_INTERVAL_S": "0.5"} if default else {}

    async def election(system: System) -> tuple[int, bool]:
        code = await play(args, system)
        if not args.once:
            say(f"serving until Ctrl-C — open {system.site_url}")
        return code, not args.once

    return await serve_until_signal(args, settings, then=election, extra_env=extra)


async def play(args: argparse.Namespace, system: System) -> int:
    """The simulated election against the running services, then the checks; 0 when they all pass."""
    from services.tally.audit import verify_chain
    from suara.registry.catalog import fetch_contests
    from suara.registry.summary import sample_tps
    from suara.runtime.database import connect
    from suara.site.audit import SiteReport, SiteUnreadable, audit_site, site_reader

    say(f"site: {system.site_url} (the public page; its JSON is under /pemilu, /wilayah and /suara)")
    async with connect(system.database_url) as conn:
        tps = await sample_tps(conn, args.forms)
        ballot = sorted((await fetch_contests(conn))["ppwp"].choices, key=lambda c: c.nomor_urut)
    choices = [c.id for c in ballot]
    names = {c.id: c.nama for c in ballot}
    outcomes = await simulate(system, tps, names, args.seed, photos=args.photos)
    say("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    if args.photos > 0 and tps:
        first = "/".join(tps[0][:n] for n in (2, 4, 6, 10, 13))
        say(f"form photos: {min(args.photos, len(tps))} TPS sent theirs, e.g. {system.site_url}#ppwp/{first}")
    await _relay_delivered(system)
    national = await show_totals(system, choices)
    published = await _published_national(system)
    snapshot = published.pop("snapshot")
    same = published == national
    say(
        f"site: snapshot {snapshot} published; its national totals "
        + ("equal aggregate's" if same else f"DIFFER from aggregate's: {published} vs {national}")
    )
    try:
        heads = audit_site(site_reader(str(system.site_dir)))  # what anyone can check from the site alone
    except SiteUnreadable as exc:
        heads = SiteReport(problems=[f"the site cannot be read: {exc}"])
    async with connect(system.database_url) as conn:
        report = await verify_chain(conn, published={h.head.position: h.head.hash for h in heads.heads})
    report.problems += heads.problems
    verdict = "OK" if report.ok and same else "BROKEN"
    say(
        f"verification: {verdict} — chain {'intact' if report.ok else 'BROKEN'}, {report.records:,} records, "
        f"head {report.head_hash[:16]}…, {len(heads.heads)} signed published heads reached; "
        f"site {'matches' if same else 'DOES NOT MATCH'} aggregate"
    )
    for problem in report.problems[:10]:
        say(f"  - {problem}")
    say(f"credentials: admin {system.admin_key}, relay {system.relay_key}, reader {system.reader_key}")
    if system.metrics:
        say("metrics (Prometheus): " + ", ".join(f"{name} {url}" for name, url in system.metrics.items()))
    say(f"site: {system.site_url}")
    return 0 if report.ok and same else 1


async def _until(done: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll `done` until true: the services run in other processes, with nothing to await across them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CATCH_UP_TIMEOUT_S
    while not await done():
        if loop.time() > deadline:
            raise RuntimeError(f"{what} did not catch up within {CATCH_UP_TIMEOUT_S:.0f}s")
        await asyncio.sleep(POLL_INTERVAL_S)


async def _relay_delivered(system: System) -> None:
    """Once tally's relay has delivered every accepted form to aggregate (tally's own account of its outbox)."""
    from services.tally.relay import undelivered
    from suara.runtime.database import connect

    async with connect(system.database_url) as conn:

        async def delivered() -> bool:
            return await undelivered(conn) == 0

        await _until(delivered, "the relay")


async def _published_national(system: System) -> dict[str, Any]:
    """Once publish has caught up with aggregate (as its GetStatus says): the published national numbers."""
    import json

    from suara.client.stubs import publish_stub
    from suara.v1 import publish_pb2

    async with system.channel(system.publish_address) as channel:
        stub = publish_stub(channel)

        async def caught_up() -> bool:
            status = (await stub.GetStatus(publish_pb2.GetStatusRequest(), timeout=5)).status
            return status.snapshot > 0 and status.aggregate_sequence == status.aggregate_newest

        await _until(caught_up, "publish")
    doc = json.loads((system.site_dir / "pemilu/hhcw/ppwp.json").read_bytes())
    pointer = json.loads((system.site_dir / "suara/snapshot.json").read_bytes())
    chart = {k: v for k, v in doc["chart"].items() if k != "persen"}
    return {"votes": chart, "progres": doc["progres"]["progres"], "snapshot": pointer["snapshot"]}


async def show_totals(system: System, choices: list[str]) -> dict[str, Any]:
    """The national row as aggregate serves it to publish (with publish's reader credential): votes per
    choice and TPS progress."""
    from suara.client.aggregate_stub import aggregate_stub
    from suara.v1 import aggregate_pb2

    async with system.channel(system.aggregate_internal, system.reader_key) as channel:
        reply = await aggregate_stub(channel).GetArea(aggregate_pb2.GetAreaRequest(area="", contest="ppwp"))
    view = reply.view
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


async def simulate(system: System, tps: list[str], names: dict[str, str], seed: int, photos: int = 0) -> dict[str, int]:
    """One form per TPS, plus what election night brings: resends, corrections, inconsistent forms.

    `names`: the choices, in ballot order, with their names. The first `photos` TPS send the three
    photos of their paper form with it. Devices are enrolled by the admin on tally's internal
    address; forms go to its public one."""
    from loadtest.photos import form_photos
    from suara.client.sdk import photo_sha256
    from suara.client.stubs import tally_stub
    from suara.election.outcomes import outcome_name
    from suara.election.signing import DeviceKey
    from suara.v1 import form_pb2, tally_pb2

    rng = random.Random(seed)
    choices = list(names)
    outcomes: collections.Counter[str] = collections.Counter()
    keys = [DeviceKey.generate(code) for code in tps]
    async with system.channel(system.tally_internal, system.admin_key) as admin_channel:
        admin = tally_stub(admin_channel)
        auth = system.admin_metadata()
        progress = Progress("enrolling devices", len(keys))
        for i, key in enumerate(keys, 1):
            enrolled = await admin.EnrollDevice(
                tally_pb2.EnrollDeviceRequest(tps=key.tps, public_key=key.public_key, label="demo"), metadata=auth
            )
            keys[i - 1] = dataclasses.replace(key, election_id=enrolled.election_id)  # what its forms must name
            progress.update(i)
        progress.done(f"{len(keys)} devices")
    async with system.channel(system.tally_address) as channel:
        stub = tally_stub(channel)

        photographed = set(tps[: max(0, photos)])

        async def form(key: DeviceKey, version: int, broken: bool) -> tally_pb2.SubmitRequest:
            f = form_pb2.CHasilForm(tps=key.tps, contest="ppwp", version=version, election_id=key.election_id)
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
            # The photos show the numbers as signed, slip included; their hashes are signed with them.
            pictures = await asyncio.to_thread(form_photos, f, names) if key.tps in photographed else []
            f.photo_sha256.extend(photo_sha256(p) for p in pictures)
            payload = f.SerializeToString()
            return tally_pb2.SubmitRequest(
                form=form_pb2.SignedForm(payload=payload, signature=key.sign(payload), device_id=key.device_id),
                photos=[tally_pb2.Photo(content=p) for p in pictures],
            )

        progress = Progress("election night", len(keys))
        done = 0

        async def station(key: DeviceKey) -> None:
            nonlocal done
            broken = rng.random() < 0.05
            first = await form(key, 1, broken)
            sends = [first, first] if rng.random() < 0.1 else [first]  # a lost reply: the device resends
            if broken or rng.random() < 0.03:
                sends.append(await form(key, 2, False))  # the correction, signed as version 2
            for request in sends:
                try:
                    response = await stub.Submit(request)
                    outcomes[outcome_name(response.outcome)] += 1
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
