"""A fake aggregate for the relay to deliver to, behind the real service-credential check.

`FakeAggregate` stands in for the aggregate service until the relay's
integration tests against the real one are added: it records every
ApplyUpdates it receives and answers APPLIED, and it can be made to fail —
UNAVAILABLE for the next N calls (aggregate down), or record the batch and
then abort (the reply is lost after the work was done).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc

from services.aggregate.access import aggregate_rules
from services.tally.relay import Relay
from suara.client import service_names
from suara.runtime.auth.credential import ServiceCredential
from suara.runtime.auth.interceptor import AuthInterceptor
from suara.runtime.auth.service_tokens import ServiceTokens
from suara.runtime.auth.store import PgCredentialStore
from suara.runtime.database import Database
from suara.runtime.grpc_server import Server, create_server
from suara.v1 import aggregate_pb2, aggregate_pb2_grpc, form_pb2, tally_pb2
from tests.support.factories import consistent_form, signed
from tests.support.tally import Tally
from tests.support.waiting import WAIT_S

TABLE = "relay_test.service_credential"

Key = tuple[str, str, int]  # (tps, contest, version)


class FakeAggregate(aggregate_pb2_grpc.AggregateServiceServicer):
    def __init__(self) -> None:
        self.attempts = 0  # every ApplyUpdates that reached the servicer
        self.received: list[list[aggregate_pb2.TpsUpdate]] = []  # batches it got (and applied) in order
        self.confirmed: list[list[aggregate_pb2.TpsUpdate]] = []  # batches whose reply went out
        self.unavailable_for = 0  # the next N calls fail before doing anything
        self.drop_replies = 0  # the next N calls are recorded, then the reply is lost
        self.hold: asyncio.Event | None = None  # when set, replies wait for it
        # A batch holding one of these TPS fails whole (INTERNAL), as every batch did behind a TPS whose
        # votes overflowed bigint; one holding a TPS of `refuse` gets it REFUSED, the rest APPLIED.
        self.fail_with_tps: set[str] = set()
        self.refuse: set[str] = set()
        self.fail_every_call: grpc.StatusCode | None = None
        self.changed = asyncio.Condition()

    async def ApplyUpdates(
        self, request: aggregate_pb2.ApplyUpdatesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> aggregate_pb2.ApplyUpdatesResponse:
        async with self.changed:
            self.attempts += 1
            self.changed.notify_all()
            if self.unavailable_for > 0:
                self.unavailable_for -= 1
                await context.abort(grpc.StatusCode.UNAVAILABLE, "aggregate is down (fake)")
            if self.fail_every_call is not None:
                await context.abort(self.fail_every_call, "aggregate is broken (fake)")
            if any(u.tps in self.fail_with_tps for u in request.updates):
                await context.abort(grpc.StatusCode.INTERNAL, "numeric value out of range (fake)")
            self.received.append(list(request.updates))
            self.changed.notify_all()
        if self.hold is not None:
            await self.hold.wait()
        async with self.changed:
            if self.drop_replies > 0:
                self.drop_replies -= 1
                await context.abort(grpc.StatusCode.UNAVAILABLE, "reply lost (fake)")
            refused = [i for i, u in enumerate(request.updates) if u.tps in self.refuse]
            self.confirmed.append([u for i, u in enumerate(request.updates) if i not in refused])
            self.changed.notify_all()
        return aggregate_pb2.ApplyUpdatesResponse(
            outcomes=[
                aggregate_pb2.UPDATE_OUTCOME_REFUSED if i in refused else aggregate_pb2.UPDATE_OUTCOME_APPLIED
                for i in range(len(request.updates))
            ],
            sequence=len(self.confirmed),
            refusals=[
                aggregate_pb2.UpdateRefusal(
                    index=i, fields=[f"updates[{i}].totals.suara_sah"], reason="more than this TPS can count (fake)"
                )
                for i in refused
            ],
        )

    async def ApplyAreaUpdates(
        self, request: aggregate_pb2.ApplyAreaUpdatesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> aggregate_pb2.ApplyAreaUpdatesResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")
        raise AssertionError

    async def GetArea(
        self, request: aggregate_pb2.GetAreaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> aggregate_pb2.GetAreaResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")
        raise AssertionError

    async def GetAreas(
        self, request: aggregate_pb2.GetAreasRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> aggregate_pb2.GetAreasResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")
        raise AssertionError

    async def Changes(
        self, request: aggregate_pb2.ChangesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> aggregate_pb2.ChangesResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")
        raise AssertionError

    async def SubmitRecap(
        self, request: aggregate_pb2.SubmitRecapRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> aggregate_pb2.SubmitRecapResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")
        raise AssertionError

    async def GetReconciliation(
        self, request: aggregate_pb2.GetReconciliationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> aggregate_pb2.GetReconciliationResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")
        raise AssertionError

    async def ListMismatches(
        self, request: aggregate_pb2.ListMismatchesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> aggregate_pb2.ListMismatchesResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")
        raise AssertionError

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), WAIT_S)

    def delivered_keys(self) -> list[Key]:
        return [(u.tps, u.contest, u.version) for batch in self.confirmed for u in batch]


@dataclass
class Rig:
    """tally, the fake aggregate behind the credential check, and relays wired to both."""

    tally: Tally
    fake: FakeAggregate
    server: Server
    port: int
    credential: ServiceCredential
    pool: asyncpg.Pool
    relays: list[Relay] = field(default_factory=list)
    forms: dict[Key, form_pb2.CHasilForm] = field(default_factory=dict)  # every form submitted
    quarantined: set[Key] = field(default_factory=set)  # the ones made inconsistent on purpose

    @property
    def db(self) -> asyncpg.Connection:
        return self.tally.db

    def relay(self, *, batch: int = 1000, poll_interval_s: float = 0.2) -> Relay:
        relay = Relay(
            self.tally.db_url,
            f"127.0.0.1:{self.port}",
            self.credential,
            batch=batch,
            poll_interval_s=poll_interval_s,
            backoff_base_s=0.01,
            backoff_cap_s=0.2,
        )
        self.relays.append(relay)
        relay.start()
        return relay

    async def submit(self, count: int, *, stations: int = 200, quarantine_every: int = 7) -> list[Key]:
        """`count` forms through the real tally, each a new current version (so each gets an outbox row)."""
        keys: list[Key] = []
        pool = [await self.tally.station() for _ in range(min(stations, count))]
        requests = []
        for i in range(count):
            station = pool[i % len(pool)]
            version = 1 + max((k[2] for k in self.forms if k[0] == station.tps), default=0)
            form = consistent_form(station.tps, "ppwp", self.tally.contests["ppwp"], version, seed=i)
            if quarantine_every and i % quarantine_every == 0:
                form.suara_sah += 1  # valid ≠ sum of the votes, and valid + invalid ≠ total
            key = (station.tps, "ppwp", version)
            if quarantine_every and i % quarantine_every == 0:
                self.quarantined.add(key)
            self.forms[key] = form
            keys.append(key)
            requests.append(signed(station.key, form))
        for start in range(0, len(requests), 1000):
            reply = await self.tally.stub.SubmitBatch(
                tally_pb2.SubmitBatchRequest(items=requests[start : start + 1000]), timeout=WAIT_S
            )
            outcomes = {tally_pb2.Outcome.Name(r.outcome).removeprefix("OUTCOME_") for r in reply.results}
            assert outcomes <= {"ACCEPTED", "QUARANTINED"}, outcomes
        return keys

    async def pending(self) -> int:
        return int(await self.db.fetchval("SELECT count(*) FROM tally.outbox WHERE delivered_at IS NULL"))

    async def drained(self, *relays: Relay) -> None:
        """Until nothing is pending, woken by the relays catching up (not by polling the clock)."""
        relays = relays or tuple(self.relays)
        while await self.pending():
            waits = [asyncio.ensure_future(r.wait_caught_up()) for r in relays]
            try:
                done, _ = await asyncio.wait(waits, timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED)
                assert done, "no relay caught up in time"
            finally:
                for w in waits:
                    w.cancel()

    async def outbox_keys(self) -> list[Key]:
        rows = await self.db.fetch("SELECT tps, contest, version FROM tally.outbox ORDER BY id")
        return [(r["tps"], r["contest"], r["version"]) for r in rows]

    async def restart_aggregate(self) -> None:
        """A fresh fake on the same port (after `stop_aggregate`), as after aggregate's process restarts."""
        self.server, _ = await start_fake(self.fake, self.pool, self.port)

    def expected(self, keys: list[Key]) -> list[tuple[Any, ...]]:
        return [expected_update(k, self.forms[k], k in self.quarantined) for k in keys]


async def start_fake(fake: FakeAggregate, pool: asyncpg.Pool, port: int = 0) -> tuple[Server, int]:
    auth = AuthInterceptor(ServiceTokens(PgCredentialStore(Database(pool), TABLE)), aggregate_rules())
    server, bound = create_server(
        lambda s: aggregate_pb2_grpc.add_AggregateServiceServicer_to_server(fake, s),
        [service_names.AGGREGATE.full_name],
        port=port,
        interceptors=[auth],
    )
    await server.start()
    return server, bound


def expected_update(key: Key, form: form_pb2.CHasilForm, quarantined: bool) -> tuple[Any, ...]:
    """The oracle: what aggregate must receive for a submitted form, written out from the form itself."""
    return (
        *key,
        dict(form.votes),
        form.suara_sah,
        form.suara_tidak_sah,
        form.suara_total,
        form.pemilih_dpt.j,
        form.pengguna_total.j,
        quarantined,
    )


def received_update(u: aggregate_pb2.TpsUpdate) -> tuple[Any, ...]:
    t = u.totals
    return (u.tps, u.contest, u.version, dict(t.votes), t.suara_sah, t.suara_tidak_sah, t.suara_total, t.dpt,
            t.pengguna, u.quarantined)  # fmt: skip
