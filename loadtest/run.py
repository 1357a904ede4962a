"""One load-test run: registry from the site, devices, the night (closed or open loop), settle, verify, report.

Every form goes through the client SDK (`suara.client.sdk.Client`): signed, stored in a SQLite outbox,
sent, retried with the SDK's backoff and tally's retry-after. Each worker has its own outbox, and an
offline device its own (it is flushed with `Client.flush` when the device is back). The outboxes live
on tmpfs (/dev/shm) when there is one: the SDK keeps synchronous=FULL, and on tmpfs an fsync costs
nothing, so the load generator's own durability (not what is tested) does not cap the rate — and
no SDK change is needed.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from loadtest.devices import enroll
from loadtest.forms import Variant, make_form
from loadtest.freshness import Sampler, freshness
from loadtest.oracle import STORED, Oracle
from loadtest.plan import PROFILES, Job, Plan, Step, make_plan, sample_tps
from loadtest.registry import Registry, read_contests_listed, read_registry
from loadtest.report import Stats, build_report
from loadtest.site import Site, SiteError, open_site, read_json
from loadtest.verify import Mismatch, Verification, verify
from suara.client.outbox import Entry
from suara.client.sdk import Attempt, Client
from suara.client.stubs import tally_stub
from suara.election.outcomes import outcome_name
from suara.election.signing import DeviceKey
from suara.v1 import form_pb2, tally_pb2, tally_pb2_grpc

SHM = Path("/dev/shm")


def _tmpfs() -> Path | None:
    return SHM if SHM.is_dir() else None


def _on_tmpfs(path: Path) -> bool:
    return SHM.is_dir() and path.resolve().is_relative_to(SHM.resolve())


class LoadTestError(Exception):
    """The run cannot start or go on (no site, a non-empty election, a bad admin key…)."""


@dataclass
class Config:
    target: str
    admin_token: str  # tally's admin bearer token (the CLI reads it from --admin-key)
    site: str
    scale: float = 1.0
    contests: list[str] | None = None  # None: every contest the site's pointer lists
    # Closed loop: workers; open loop: devices in flight at most (arrivals beyond wait). 256, not 64: election
    # night has thousands of devices sending, and tally's group commit shares a transaction among the
    # callers waiting (scale 0.1: night 144 -> 123 s, CPU per submission -14 %; 512 gained nothing).
    concurrency: int = 256
    rate: float | None = None  # arrivals/s (open loop); None: closed loop
    faults: str = "standard"
    seed: int = 2024
    enroll_concurrency: int = 4  # EnrollDevices runs of 1,000 in flight
    read_concurrency: int = 64
    sample_interval_s: float = 0.5
    snapshot_timeout_s: float = 300.0
    settle_s: float = 3.0  # the pointer's aggregate_sequence unchanged this long: publish caught up
    settle_timeout_s: float = 900.0  # most seconds without a new snapshot while settling
    recheck_rounds: int = 2
    workdir: Path | None = None  # the outboxes; default a temporary directory on tmpfs
    progress: Callable[[str, int | None], ProgressLine] | None = None  # (label, total) -> a progress line

    def mode(self) -> str:
        return f"open loop, {self.rate:g} arrivals/s mean" if self.rate else f"closed loop, {self.concurrency} workers"


class ProgressLine(Protocol):
    """What cli.progress.Progress offers: the run reports through it, and knows no terminal."""

    def update(self, done: int, total: int | None = None, note: str = "") -> None: ...

    def done(self, message: str = "") -> None: ...


class _Silent:
    def update(self, done: int, total: int | None = None, note: str = "") -> None:
        pass

    def done(self, message: str = "") -> None:
        pass


def _progress(config: Config, label: str, total: int | None) -> ProgressLine:
    return _Silent() if config.progress is None else config.progress(label, total)


async def wait_for_snapshot(site: Site, timeout_s: float, interval_s: float = 0.5) -> dict[str, Any]:
    """The site's pointer, once publish has written a first snapshot."""
    deadline = time.monotonic() + timeout_s
    while True:
        pointer = await read_json(site, "suara/snapshot.json")
        if isinstance(pointer, dict):
            return pointer
        if time.monotonic() > deadline:
            where = site.describe()
            raise LoadTestError(f"no suara/snapshot.json at {where} after {timeout_s:g} s: is publish running?")
        await asyncio.sleep(interval_s)  # a file on a site: polling is the only way to see it appear


class Driver:
    """Runs jobs: each step of a form through the SDK, every answer into the stats and the oracle."""

    def __init__(
        self, config: Config, registry: Registry, keys: dict[str, DeviceKey], workdir: Path, stats: Stats
    ) -> None:
        self.config = config
        self.choices = {c: r.choices for c, r in registry.contests.items()}
        self.keys = keys
        self.workdir = workdir
        self.stats = stats
        self.oracle = Oracle()
        self.done = 0
        self._reported: dict[str, asyncio.Event] = {}  # tps -> its station job finished
        self._offline_variant: dict[tuple[str, str, int], Variant] = {}
        self._channel: grpc.aio.Channel | None = None

    def client_options(self) -> dict[str, Any]:
        # A quicker first retry than a phone's (0.5 s): the server's retry-after still sets the floor.
        return {"backoff_base_s": 0.05, "backoff_cap_s": 5.0, "call_timeout_s": 60.0}

    async def open_client(self, name: str) -> Client:
        return await Client.open(
            self.workdir / f"{name}.sqlite",
            self.config.target,
            inline_outbox=_on_tmpfs(self.workdir),  # a thread hop per outbox call cost ~0.4 ms of CPU per form
            **self.client_options(),
        )

    def _stub(self) -> tally_pb2_grpc.TallyServiceAsyncStub:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.config.target)
        return tally_stub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    def reported(self, tps: str) -> asyncio.Event:
        event = self._reported.get(tps)
        if event is None:
            event = self._reported[tps] = asyncio.Event()
        return event

    async def run_job(self, client: Client, job: Job) -> None:
        if job.kind == "station":
            try:
                if job.offline:
                    await self._store_offline(job)
                else:
                    for step in job.steps:
                        await self._step(client, job.tps, step)
            finally:
                self.reported(job.tps).set()
        else:
            await self.reported(job.tps).wait()  # a correction or a reconnect comes after the first report
            if job.kind == "reconnect":
                await self._reconnect(job.tps)
            else:
                for step in job.steps:
                    await self._step(client, job.tps, step)
        self.done += 1

    def _form(self, tps: str, step: Step) -> form_pb2.CHasilForm:
        return make_form(self.config.seed, tps, step.contest, step.version, step.variant, self.choices[step.contest])

    async def _timed(self, call: Awaitable[Attempt]) -> Attempt:
        started = time.perf_counter()
        attempt = await call
        self.stats.latencies_ms.append((time.perf_counter() - started) * 1000)
        self.stats.submissions += 1
        return attempt

    async def _step(self, client: Client, tps: str, step: Step) -> None:
        key = self.keys[tps]
        if step.action == "send":
            attempt = await self._timed(client.submit(self._form(tps, step), key))
        elif step.action == "resend":
            attempt = await self._timed(client.resend(tps, step.contest, step.version))
        else:  # lost_reply: tally stores it, the answer never reaches the device, which sends it again
            entry, _ = await client.store(self._form(tps, step), key)
            await self._send_and_drop(entry)
            entry = await client.outbox.record_failure(entry.id, "DEADLINE_EXCEEDED", "reply lost (load test)")
            attempt = await self._timed(client.send(entry))
        backoff = client.backoff()
        while attempt.retry:  # the SDK's retry policy, one entry at a time: full jitter, never before retry-after
            self.stats.errors[attempt.entry.last_code or "UNKNOWN"] += 1
            await asyncio.sleep(max(backoff.next_delay(), attempt.retry_after_s or 0.0))
            attempt = await self._timed(client.send(attempt.entry))
        self._record(attempt.entry, attempt.outcome, step.variant)

    async def _send_and_drop(self, entry: Entry) -> None:
        request = tally_pb2.SubmitRequest(
            form=form_pb2.SignedForm(payload=entry.payload, signature=entry.signature, device_id=entry.device_id)
        )
        started = time.perf_counter()
        try:
            response = await self._stub().Submit(request, timeout=60)
            self.stats.outcomes[outcome_name(response.outcome)] += 1
        except grpc.aio.AioRpcError as exc:
            self.stats.errors[exc.code().name] += 1
        self.stats.latencies_ms.append((time.perf_counter() - started) * 1000)
        self.stats.submissions += 1

    def _record(self, entry: Entry, outcome: str | None, variant: Variant) -> None:
        if outcome is None:
            if entry.state == "rejected":
                self.stats.errors[entry.last_code or "UNKNOWN"] += 1
                if variant != "malformed" or entry.last_code != "INVALID_ARGUMENT":
                    self._unexpected(entry, variant, entry.last_code)
            return  # already sent earlier: nothing new was answered
        self.stats.outcomes[outcome] += 1
        if outcome not in STORED:
            self._unexpected(entry, variant, outcome)
            return
        if variant == "malformed" or (variant, outcome) in (("ok", "QUARANTINED"), ("inconsistent", "ACCEPTED")):
            self._unexpected(entry, variant, outcome)
        if variant != "malformed" and self.oracle.acknowledge(entry.tps, entry.contest, entry.version, variant):
            self.stats.acks.setdefault(entry.contest, []).append((time.monotonic(), self.oracle.counted(entry.contest)))

    def _unexpected(self, entry: Entry, variant: Variant, got: str | None) -> None:
        self.stats.unexpected.append(
            {"tps": entry.tps, "contest": entry.contest, "version": entry.version, "variant": variant, "got": got}
        )

    async def _store_offline(self, job: Job) -> None:
        client = await self.open_client(f"offline-{job.tps}")
        try:
            for step in job.steps:
                await client.store(self._form(job.tps, step), self.keys[job.tps])
                self._offline_variant[(job.tps, step.contest, step.version)] = step.variant
        finally:
            await client.close()

    async def _reconnect(self, tps: str) -> None:
        """The device is back: the SDK's own store-and-forward flush (SubmitBatch) sends what waited."""
        client = await self.open_client(f"offline-{tps}")
        try:
            report = await client.flush()
        finally:
            await client.close()
        for entry in (*report.sent, *report.rejected):
            self.stats.submissions += 1
            self._record(entry, entry.outcome, self._offline_variant[entry.key])


async def drive(driver: Driver, plan: Plan, config: Config, line: ProgressLine) -> float:
    """The night itself; its wall time in seconds."""
    started = time.monotonic()

    def note() -> str:
        elapsed = max(1e-6, time.monotonic() - started)
        return f"{driver.stats.submissions / elapsed:,.0f} submissions/s"

    clients = [await driver.open_client(f"worker-{i}") for i in range(max(1, config.concurrency))]
    try:
        if config.rate is None:
            jobs = iter(plan.jobs)

            async def worker(client: Client) -> None:
                for job in jobs:  # one shared iterator: jobs start in the plan's order
                    await driver.run_job(client, job)
                    line.update(driver.done, note=note())

            await asyncio.gather(*(worker(c) for c in clients))
        else:
            night_s = plan.stations / config.rate
            idle: asyncio.Queue[Client] = asyncio.Queue()
            for c in clients:
                idle.put_nowait(c)

            async def arrive(job: Job, due: float) -> None:
                client = await idle.get()
                driver.stats.schedule_lag_ms.append(max(0.0, time.monotonic() - due) * 1000)
                try:
                    await driver.run_job(client, job)
                finally:
                    idle.put_nowait(client)
                line.update(driver.done, note=note())

            tasks = []
            for job in plan.jobs:
                due = started + job.at * night_s
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)  # the arrival curve: this job is due then
                tasks.append(asyncio.create_task(arrive(job, due)))
            await asyncio.gather(*tasks)
    finally:
        for c in clients:
            await c.close()
    return time.monotonic() - started


async def settle(
    site: Site, driver: Driver, contests: list[str], config: Config, line: ProgressLine | None = None
) -> bool:
    """Until the site shows every counted TPS in a snapshot that says it is caught up (every change
    aggregate had when the cycle ended is in its files), and the pointer's aggregate_sequence stopped
    moving (the relay may still be delivering a correction, which counts no new TPS).

    False once `settle_timeout_s` pass without a new snapshot: a publisher still working through a
    backlog (a whole country's night leaves hundreds of thousands of changes) is waited for, a stalled
    one is not.
    """
    counted = sum(driver.oracle.counted(c) for c in contests)
    last: Any = None
    snapshot: Any = None
    since = progressed = time.monotonic()
    while True:
        pointer = await read_json(site, "suara/snapshot.json") or {}
        now = time.monotonic()
        if pointer.get("aggregate_sequence") != last:
            last, since = pointer.get("aggregate_sequence"), now
        if pointer.get("snapshot") != snapshot:
            snapshot, progressed = pointer.get("snapshot"), now
        shown = pointer.get("contests", {})
        progres = {c: shown.get(c, {}).get("progres") for c in contests}
        if line is not None:
            line.update(
                sum(p for p in progres.values() if isinstance(p, int)),
                counted,
                note=f"snapshot {snapshot}, aggregate change {last}",
            )
        caught_up = pointer.get("caught_up") is True and all(progres[c] == driver.oracle.counted(c) for c in contests)
        if caught_up and now - since >= config.settle_s:
            return True
        if now - progressed > config.settle_timeout_s:
            return False
        await asyncio.sleep(config.sample_interval_s)  # polling the site: publish's progress is not awaitable here


async def run_loadtest(config: Config) -> dict[str, Any]:
    """The whole run; the report (its `verification.exact` says whether the site was right)."""
    if config.faults not in PROFILES:
        raise LoadTestError(f"--faults must be one of {', '.join(PROFILES)}, got {config.faults!r}")
    token = config.admin_token
    phases: dict[str, float] = {}
    site = open_site(config.site)
    own_workdir = config.workdir is None
    workdir = config.workdir or Path(tempfile.mkdtemp(prefix="suara-loadtest-", dir=_tmpfs()))
    try:
        t = time.monotonic()
        line = _progress(config, "waiting for publish's first snapshot", None)
        pointer = await wait_for_snapshot(site, config.snapshot_timeout_s)
        line.done(f"snapshot {pointer.get('snapshot')}")
        phases["first_snapshot"] = time.monotonic() - t
        contests = config.contests or await read_contests_listed(site)
        for c in contests:
            shown = pointer.get("contests", {}).get(c, {})
            if shown.get("progres") or shown.get("quarantined"):
                raise LoadTestError(
                    f"the election already holds forms for {c} ({shown.get('progres')} counted, "
                    f"{shown.get('quarantined')} quarantined): the load test's oracle needs a fresh election"
                )
        t = time.monotonic()
        line = _progress(config, "reading the registry", None)
        registry = await read_registry(
            site, contests, concurrency=config.read_concurrency, on_progress=lambda n: line.update(n, note="files")
        )
        line.done(
            ", ".join(f"{c}: {len(r.tps()):,} TPS in {len(r.children):,} areas" for c, r in registry.contests.items())
        )
        phases["registry"] = time.monotonic() - t
        held_all = registry.held()
        sampled = sample_tps(list(held_all), config.scale, config.seed)
        held = {tps: held_all[tps] for tps in sampled}
        plan = make_plan(held, PROFILES[config.faults], config.seed)

        t = time.monotonic()
        line = _progress(config, "enrolling devices", len(sampled))
        enrollment = await enroll(
            config.target, token, sampled, concurrency=config.enroll_concurrency, on_progress=line.update
        )
        line.done(
            f"{len(enrollment.keys):,} devices (keys {enrollment.keygen_s:.1f} s, enroll {enrollment.enroll_s:.1f} s)"
        )
        phases["devices"] = time.monotonic() - t

        stats = Stats()
        driver = Driver(config, registry, enrollment.keys, workdir, stats)
        sampler = Sampler(site, contests, config.sample_interval_s)
        sampler.start()
        try:
            line = _progress(config, "election night", len(plan.jobs))
            run_s = await drive(driver, plan, config, line)
            line.done(f"{stats.submissions:,} submissions in {run_s:.1f} s")
            t = time.monotonic()
            line = _progress(config, "waiting for the site to catch up (TPS shown)", None)
            settled = await settle(site, driver, contests, config, line)
            line.done("caught up" if settled else f"no new snapshot for {config.settle_timeout_s:g} s: publish stalled")
            phases["night"] = run_s
            phases["settle"] = time.monotonic() - t
            await sampler.sample_once()  # the state verification is about to read, for freshness too
        finally:
            await sampler.stop()
            await driver.close()

        t = time.monotonic()
        by_contest: dict[str, list[str]] = {}
        for tps, cs in held.items():
            for c in cs:
                by_contest.setdefault(c, []).append(tps)
        total_files = sum(len(r.children) for r in registry.contests.values()) + sum(map(len, by_contest.values()))
        line = _progress(config, "verifying the site", total_files)
        verification = await verify(
            site,
            registry.contests.values(),
            driver.oracle,
            config.seed,
            by_contest,
            concurrency=config.read_concurrency,
            recheck_rounds=config.recheck_rounds,
            recheck_wait_s=config.settle_s,
            on_progress=line.update,
        )
        line.done(f"{verification.areas_checked + verification.tps_checked:,} files")
        phases["verify"] = time.monotonic() - t
        _add_unexpected(verification, stats, settled, driver, contests)
        report = build_report(
            config={
                "target": config.target,
                "site": config.site,
                "scale": config.scale,
                "contests": contests,
                "concurrency": config.concurrency,
                "rate": config.rate,
                "faults": config.faults,
                "seed": config.seed,
                "mode": config.mode(),
            },
            registry={
                c: {"tps": len(r.tps()), "areas": len(r.children), "choices": len(r.choices)}
                for c, r in registry.contests.items()
            },
            devices={
                "enrolled": len(enrollment.keys),
                "keygen_s": round(enrollment.keygen_s, 3),
                "enroll_s": round(enrollment.enroll_s, 3),
                "enroll_per_s": round(len(enrollment.keys) / max(enrollment.enroll_s, 1e-9), 1),
                "enroll_retries": dict(enrollment.retries),
            },
            plan={
                "stations": plan.stations,
                "jobs": len(plan.jobs),
                "forms": plan.forms(),
                "faults": dict(sorted(plan.faults.items())),
            },
            stats=stats,
            run_s=run_s,
            fresh=freshness(stats.acks, sampler.samples),
            verification=verification,
            phases_s=phases,
        )
        report["settled"] = settled
        report["oracle"] = {c: {"counted": driver.oracle.counted(c)} for c in contests}
        return report
    except SiteError as exc:
        raise LoadTestError(str(exc)) from exc
    finally:
        await site.close()
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _add_unexpected(
    verification: Verification, stats: Stats, settled: bool, driver: Driver, contests: list[str]
) -> None:
    """Answers that contradict the forms' intent, and a site that never caught up, are mismatches too."""
    extra = [
        Mismatch(f"tally:{u['tps']}/{u['contest']}/v{u['version']}", "outcome", u["got"], _intended(u["variant"]))
        for u in stats.unexpected
    ]
    if not settled:
        extra.append(Mismatch("suara/snapshot.json", "settled", False, {c: driver.oracle.counted(c) for c in contests}))
    if extra:
        verification.exact = False
        verification.mismatch_count += len(extra)
        verification.mismatches = (extra + verification.mismatches)[: max(len(verification.mismatches), 50)]


def _intended(variant: str) -> str:
    return {"ok": "ACCEPTED", "inconsistent": "QUARANTINED", "malformed": "INVALID_ARGUMENT"}[variant]
