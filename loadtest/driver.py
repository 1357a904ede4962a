"""The night's driver: each job's forms through the client SDK, every answer into the stats and the oracle.

Every form goes through the client SDK (`suara.client.sdk.Client`): signed, stored in a SQLite outbox,
sent, retried with the SDK's backoff and tally's retry-after (`Client.retry`). Each worker has its own
outbox, and an offline device its own (it is flushed with `Client.flush` when the device is back). The
outboxes live on tmpfs (/dev/shm) when there is one: the SDK keeps synchronous=FULL, as on a phone, and
on tmpfs an fsync costs nothing, so the load generator's own durability (not what is tested) does not
cap the rate.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import grpc

from loadtest.config import Config, ProgressLine
from loadtest.forms import Variant, make_form
from loadtest.oracle import STORED, Oracle
from loadtest.outbox import InlineOutbox
from loadtest.photos import form_photos
from loadtest.plan import Job, Plan, Step
from loadtest.registry import Registry
from loadtest.report import Stats
from suara.client.outbox import Entry, Outbox
from suara.client.sdk import Attempt, Client
from suara.client.stubs import tally_stub
from suara.election.outcomes import outcome_name
from suara.election.signing import DeviceKey
from suara.runtime.tls import open_channel
from suara.v1 import form_pb2, tally_pb2, tally_pb2_grpc

SHM = Path("/dev/shm")


def outbox_dir() -> Path:
    """A new temporary directory for the outboxes, on tmpfs when there is one."""
    return Path(tempfile.mkdtemp(prefix="suara-loadtest-", dir=SHM if SHM.is_dir() else None))


def _on_tmpfs(path: Path) -> bool:
    return SHM.is_dir() and path.resolve().is_relative_to(SHM.resolve())


class Driver:
    """Runs jobs: each step of a form through the SDK, every answer into the stats and the oracle."""

    def __init__(
        self, config: Config, registry: Registry, keys: dict[str, DeviceKey], workdir: Path, stats: Stats
    ) -> None:
        self.config = config
        self.choices = {c: r.choices for c, r in registry.contests.items()}
        self.names = {c: r.names for c, r in registry.contests.items()}
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
        path = self.workdir / f"{name}.sqlite"
        # On tmpfs, the outbox's calls stay on the event loop: a thread hop per call costs more than the call.
        outbox = await (InlineOutbox if _on_tmpfs(self.workdir) else Outbox).open(path)
        return Client(outbox, self.config.target, tls=self.config.tls, owns_outbox=True, **self.client_options())

    def _stub(self) -> tally_pb2_grpc.TallyServiceAsyncStub:
        if self._channel is None:
            self._channel = open_channel(self.config.target, self.config.tls)
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

    def _with_photos(self, tps: str) -> bool:
        """Whether this TPS photographs its forms: a fixed share of the TPS, the same in every run of a seed."""
        share = self.config.photos
        return share > 0 and random.Random(f"{self.config.seed}:{tps}:photos").random() < share

    async def _photos(self, form: form_pb2.CHasilForm, variant: Variant) -> list[bytes]:
        """The photos this form is sent with (none for a malformed form: it is refused whatever it carries)."""
        if variant == "malformed" or not self._with_photos(form.tps):
            return []
        # Off the event loop: JPEG encoding releases the GIL, the other devices keep sending meanwhile.
        return await asyncio.to_thread(form_photos, form, self.names.get(form.contest, {}))

    def _observe(self, attempt: Attempt, seconds: float) -> None:
        """One call answered or failed: its latency, and its error when it is to be retried."""
        self.stats.latencies_ms.append(seconds * 1000)
        self.stats.submissions += 1
        if attempt.retry:
            self.stats.errors[attempt.entry.last_code or "UNKNOWN"] += 1

    async def _timed(self, call: Awaitable[Attempt]) -> Attempt:
        started = time.perf_counter()
        attempt = await call
        self._observe(attempt, time.perf_counter() - started)
        return attempt

    async def _step(self, client: Client, tps: str, step: Step) -> None:
        key = self.keys[tps]
        if step.action == "send":
            form = self._form(tps, step)
            attempt = await self._timed(client.submit(form, key, await self._photos(form, step.variant)))
        elif step.action == "resend":
            attempt = await self._timed(client.resend(tps, step.contest, step.version))
        else:  # lost_reply: tally stores it, the answer never reaches the device, which sends it again
            form = self._form(tps, step)
            entry, _ = await client.store(form, key, await self._photos(form, step.variant))
            await self._send_and_drop(entry)
            entry = await client.outbox.record_failure(entry.id, "DEADLINE_EXCEEDED", "reply lost (load test)")
            attempt = await self._timed(client.send(entry))
        attempt = await client.retry(attempt, on_attempt=self._observe)
        self._record(attempt.entry, attempt.outcome, step.variant)

    async def _send_and_drop(self, entry: Entry) -> None:
        request = tally_pb2.SubmitRequest(
            form=form_pb2.SignedForm(payload=entry.payload, signature=entry.signature, device_id=entry.device_id),
            photos=[tally_pb2.Photo(content=p) for p in entry.photos],
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
                form = self._form(job.tps, step)
                await client.store(form, self.keys[job.tps], await self._photos(form, step.variant))
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
