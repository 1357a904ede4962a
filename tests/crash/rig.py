"""Crash-safety rigs: aggregate and the relay as real `suara` processes, killed with SIGKILL.

`AggregateProcess` / `RelayProcess` run the installed script against the test's
database and are killed with SIGKILL (no handler, no cleanup, no goodbye), then
started again. `Forms` feeds the in-process tally (several TPS, corrections,
stale versions, quarantine, resends) and remembers what tally acknowledged; the
oracle (tests.support.oracles.aggregate, plain Python) is built from that alone.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from cli.embedded import free_port
from services.aggregate.server import SERVICE_NAME as AGGREGATE_SERVICE
from services.tally.credentials import enroll_device
from services.tally.relay import APPLY_METHOD
from suara.election.checks import MAX_VERSION
from suara.election.signing import DeviceKey
from suara.v1 import aggregate_pb2, form_pb2, tally_pb2
from tests.support.factories import consistent_form, signed
from tests.support.oracles.aggregate import Oracle, Registry
from tests.support.pki import suite_pki
from tests.support.processes import Child, LogTail, suara_env
from tests.support.tally import BASE_SETTINGS, Tally, with_tally
from tests.support.waiting import CHANNEL_OPTIONS, STARTUP_S, WAIT_S, poll_until, until_serving

# A handful of devices stand in for thousands in the drills: each sends far more than a real device, so
# the per-device budget (covered by tests/tally/test_rate_limits.py) is lifted for them.
DRILL_SETTINGS = with_tally(BASE_SETTINGS, device_burst=1_000_000, device_rate_per_min=1e6)


def child_env(db_url: str, cwd: Path) -> dict[str, str]:
    """A crash child's environment: the test's database, JSON logs, its state under `cwd`."""
    return suara_env(DATABASE_URL=db_url, SUARA_LOG_FORMAT="json", SUARA_DATA_DIR=cwd / "state")


@dataclass
class AggregateProcess:
    """`suara aggregate serve --port P`, restartable on the same port."""

    db_url: str
    port: int
    cwd: Path
    child: Child | None = None
    kills: int = 0
    internal_port: int = field(default_factory=free_port)

    @property
    def address(self) -> str:
        """Its internal listener: where the relay delivers."""
        return f"127.0.0.1:{self.internal_port}"

    async def start(self) -> None:
        assert self.child is None or not self.child.alive
        args = ("aggregate", "serve", "--port", str(self.port))
        env = {**child_env(self.db_url, self.cwd), "SUARA_AGGREGATE_INTERNAL_PORT": str(self.internal_port)}
        self.child = child = await Child.spawn(*args, env=env, cwd=self.cwd)
        pki = suite_pki()
        async with pki.channel(
            self.address, pki.credential("test-reader", "reader"), options=CHANNEL_OPTIONS
        ) as channel:
            await until_serving(channel, AGGREGATE_SERVICE, STARTUP_S, child.assert_alive, detail=child.log.text)

    async def kill(self) -> None:
        assert self.child is not None and self.child.alive, "aggregate died on its own"
        assert await self.child.kill() == -signal.SIGKILL
        self.kills += 1

    async def close(self) -> None:
        if self.child is not None:
            await self.child.kill()


@dataclass
class RelayProcess:
    """`suara service relay` on its own, restartable."""

    db_url: str
    aggregate: str
    credential: Path
    cwd: Path
    batch: int = 1000
    child: Child | None = None
    kills: int = 0

    async def start(self) -> None:
        assert self.child is None or not self.child.alive
        args = ["service", "relay", "--aggregate", self.aggregate, "--credential", str(self.credential)]
        self.child = await Child.spawn(
            *args, "--batch", str(self.batch), env=child_env(self.db_url, self.cwd), cwd=self.cwd
        )

    def assert_alive(self) -> None:
        assert self.child is not None
        self.child.assert_alive()

    async def kill(self) -> None:
        self.assert_alive()
        assert self.child is not None
        assert await self.child.kill() == -signal.SIGKILL
        self.kills += 1

    async def close(self) -> None:
        if self.child is not None:
            await self.child.kill()


class ApplyCounter(grpc.aio.ServerInterceptor):
    """Counts the ApplyUpdates calls (and updates in them) an in-process aggregate receives."""

    def __init__(self) -> None:
        self.calls = 0
        self.updates = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler_call_details.method != APPLY_METHOD:
            return handler
        inner = handler.unary_unary

        async def counted(
            request: aggregate_pb2.ApplyUpdatesRequest, context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            self.calls += 1
            self.updates += len(request.updates)
            return await inner(request, context)  # type: ignore[arg-type]  # aio handlers take aio contexts

        return grpc.unary_unary_rpc_method_handler(
            counted,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


async def pending(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM tally.outbox WHERE delivered_at IS NULL"))


async def delivered(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM tally.outbox WHERE delivered_at IS NOT NULL"))


@dataclass
class Acked:
    version: int
    form: form_pb2.CHasilForm
    quarantined: bool


@dataclass
class Forms:
    """Forms for the tally under test, and what tally acknowledged (the oracle's only input)."""

    tally: Tally
    rng: random.Random
    stations: list[tuple[str, DeviceKey]] = field(default_factory=list)
    next_version: dict[str, int] = field(default_factory=dict)
    sent: list[tally_pb2.SubmitRequest] = field(default_factory=list)
    acked: dict[str, Acked] = field(default_factory=dict)  # tps -> its current form as tally acknowledged it
    outcomes: dict[str, int] = field(default_factory=dict)  # outcome name -> how many

    async def enroll(self, count: int) -> None:
        for tps in self.rng.sample(self.tally.tps_codes, count):
            key = DeviceKey.generate(tps)
            await enroll_device(self.tally.db, key.device_id, tps, key.public_key, "crash")
            self.stations.append((tps, key))
            self.next_version[tps] = 1

    def _one(self) -> tally_pb2.SubmitRequest:
        roll = self.rng.random()
        if roll < 0.1 and self.sent:  # a lost reply: the device sends the very same form again
            return self.rng.choice(self.sent)
        tps, key = self.rng.choice(self.stations)
        choices = self.tally.contests["ppwp"]
        corrected_to_the_cap = self.next_version[tps] > MAX_VERSION
        if (roll < 0.2 or corrected_to_the_cap) and self.next_version[tps] > 1:  # an older version arriving late
            version = self.rng.randint(1, self.next_version[tps] - 1)
        else:  # a correction: the next version, now and then skipping one
            version = min(self.next_version[tps] + (self.rng.random() < 0.1), MAX_VERSION)
            self.next_version[tps] = version + 1
        # Mostly the same content for the same version (a late copy is SUPERSEDED or a DUPLICATE); now and
        # then different content under a version tally already holds (a CONFLICT).
        variant = 0 if self.rng.random() < 0.95 else self.rng.randint(1, 2)
        form = consistent_form(tps, "ppwp", choices, version, seed=variant)
        if random.Random(f"{tps}:{version}:{variant}").random() < 0.2:  # inconsistent on purpose: quarantined
            form.suara_tidak_sah += 1
        request = signed(key, form)
        self.sent.append(request)
        return request

    async def submit(self, count: int) -> None:
        """`count` forms in one SubmitBatch; remembers each TPS's highest acknowledged current version."""
        requests = self.batch(count)
        reply = await self.tally.stub.SubmitBatch(tally_pb2.SubmitBatchRequest(items=requests), timeout=WAIT_S)
        self.record(requests, reply)

    def batch(self, count: int) -> list[tally_pb2.SubmitRequest]:
        """`count` forms as the devices send them (new versions, late ones, resends, conflicts)."""
        return [self._one() for _ in range(count)]

    def record(self, requests: list[tally_pb2.SubmitRequest], reply: tally_pb2.SubmitBatchResponse) -> None:
        """What tally acknowledged in `reply` to `requests`."""
        assert len(reply.results) == len(requests)
        for item in reply.results:
            name = tally_pb2.Outcome.Name(item.outcome).removeprefix("OUTCOME_")
            self.outcomes[name] = self.outcomes.get(name, 0) + 1
            assert name != "REJECTED", item.error
            if item.outcome not in (tally_pb2.OUTCOME_ACCEPTED, tally_pb2.OUTCOME_QUARANTINED):
                continue
            form = form_pb2.CHasilForm.FromString(requests[item.index].form.payload)
            have = self.acked.get(form.tps)
            if have is None or form.version > have.version:
                self.acked[form.tps] = Acked(form.version, form, item.outcome == tally_pb2.OUTCOME_QUARANTINED)

    async def oracle(self, db: asyncpg.Connection) -> Oracle:
        oracle = Oracle(await Registry.read(db))
        for tps, acked in self.acked.items():
            f = acked.form
            totals = aggregate_pb2.Totals(
                votes=dict(f.votes),
                suara_sah=f.suara_sah,
                suara_tidak_sah=f.suara_tidak_sah,
                suara_total=f.suara_total,
                dpt=f.pemilih_dpt.j,
                pengguna=f.pengguna_total.j,
            )
            update = aggregate_pb2.TpsUpdate(
                tps=tps, contest="ppwp", version=acked.version, totals=totals, quarantined=acked.quarantined
            )
            assert oracle.send(update) == "APPLIED"
        return oracle


@dataclass
class PublishProcess:
    """`suara publish run` on a site directory or bucket; `kill()` is SIGKILL, never a polite stop."""

    env: dict[str, str]
    cwd: Path
    proc: asyncio.subprocess.Process | None = None
    log: LogTail | None = None
    kills: int = 0
    published_in_last_run: int = 0

    async def start(self) -> None:
        assert self.proc is None or self.proc.returncode is not None
        child = await Child.spawn("publish", "run", "--port", str(free_port()), env=self.env, cwd=self.cwd)
        self.proc, self.log = child.proc, child.log

    def published(self) -> int:
        """Cycles this run has completed (the `published` log event)."""
        return len(self.snapshots())

    def snapshots(self) -> list[int]:
        """The snapshots this run has published, in order (its `published` log events)."""
        assert self.log is not None
        return [e["snapshot"] for e in self.log.events() if e.get("event") == "published"]

    def pause(self) -> None:
        """SIGSTOP: frozen with its connections (and its lock) held, as a host that stalls."""
        self.check()
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    async def wait_published(self, cycles: int) -> None:
        """A bounded poll of the child's log: until this run has published `cycles` cycles."""
        await poll_until(
            lambda: self._published_at_least(cycles), f"{cycles} cycles published", check=self.check, detail=self._tail
        )

    def _tail(self) -> str:
        assert self.log is not None
        return f"the child's log:\n{self.log.text()[-4000:]}"

    async def _published_at_least(self, cycles: int) -> bool:
        return self.published() >= cycles

    def check(self) -> None:
        assert self.proc is not None and self.log is not None
        assert self.proc.returncode is None, f"publish exited with {self.proc.returncode}:\n{self.log.text()}"

    async def kill(self) -> None:
        self.check()
        assert self.proc is not None and self.log is not None
        self.proc.send_signal(signal.SIGKILL)
        assert await self.proc.wait() == -signal.SIGKILL
        await self.log.finish()
        self.published_in_last_run = self.published()
        self.kills += 1

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self.log is not None:
            await self.log.finish()
