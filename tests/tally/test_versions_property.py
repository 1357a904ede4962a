"""Random histories against the Versions table of docs/domain.md, written out as a plain-Python oracle.

Each example is a sequence of submissions to a few (TPS, contest) slots: new
versions, resends, different payloads for a stored version, older versions,
inconsistent forms, sent one by one or grouped in SubmitBatch calls. The
outcome of every call and the final stored state must equal the oracle's.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

import asyncpg
import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.tally.credentials import enroll_device
from services.tally.server import TallyApp
from suara.client.stubs import tally_stub
from suara.election.signing import DeviceKey
from suara.v1 import tally_pb2
from tests.support.factories import consistent_form, signed
from tests.support.pki import suite_pki
from tests.support.tally import BASE_SETTINGS, CHAIN_KEY


@dataclass(frozen=True)
class Op:
    slot: int  # which TPS
    version: int
    variant: int  # which payload for that version
    inconsistent: bool
    batch: int  # ops with the same batch number and batched=True go in one SubmitBatch
    batched: bool


ops_strategy = st.lists(
    st.builds(
        Op,
        slot=st.integers(0, 1),
        version=st.integers(1, 4),
        variant=st.integers(0, 1),
        inconsistent=st.booleans(),
        batch=st.integers(0, 3),
        batched=st.booleans(),
    ),
    min_size=1,
    max_size=14,
)


@dataclass
class Oracle:
    """The Versions table: nothing here calls suara."""

    stored: dict[tuple[int, int], bytes] = field(default_factory=dict)
    outcome_of: dict[tuple[int, int], str] = field(default_factory=dict)
    current: dict[int, int] = field(default_factory=dict)
    announced: list[tuple[int, int, bool]] = field(default_factory=list)  # outbox: (slot, version, quarantined)

    def submit(self, op: Op, payload: bytes) -> str:
        key = (op.slot, op.version)
        if key in self.stored:
            return "DUPLICATE" if self.stored[key] == payload else "CONFLICT"
        self.stored[key] = payload
        if op.version > self.current.get(op.slot, 0):
            self.current[op.slot] = op.version
            outcome = "QUARANTINED" if op.inconsistent else "ACCEPTED"
            self.announced.append((op.slot, op.version, op.inconsistent))
        else:
            outcome = "SUPERSEDED"
        self.outcome_of[key] = outcome
        return outcome


_tps_pool: list[str] = []
_counter = itertools.count()


async def _run(db_url: str, ops: list[Op]) -> None:
    conn = await asyncpg.connect(db_url)
    if not _tps_pool:
        _tps_pool.extend(r["code"] for r in await conn.fetch("SELECT code FROM registry.tps ORDER BY code DESC"))
    slots = [_tps_pool.pop() for _ in range(2)]  # fresh TPS per example: examples never see each other's rows
    keys = [DeviceKey.generate(tps) for tps in slots]
    for key in keys:
        await enroll_device(conn, key.device_id, key.tps, key.public_key, "property")
    choices = [r["id"] for r in await conn.fetch("SELECT id FROM registry.choice WHERE contest = 'ppwp'")]
    app = await TallyApp.create(BASE_SETTINGS, db_url, CHAIN_KEY)
    await app.start()
    channel = suite_pki().channel(f"127.0.0.1:{app.port}")
    stub = tally_stub(channel)
    oracle = Oracle()
    try:

        def request(op: Op) -> tally_pb2.SubmitRequest:
            form = consistent_form(slots[op.slot], "ppwp", choices, op.version, seed=op.variant)
            if op.inconsistent:
                form.suara_tidak_sah += 1  # valid + invalid no longer equals the total
            return signed(keys[op.slot], form)

        i = 0
        while i < len(ops):
            op = ops[i]
            if op.batched:
                group = [ops[i]]
                while (
                    i + len(group) < len(ops) and ops[i + len(group)].batched and ops[i + len(group)].batch == op.batch
                ):
                    group.append(ops[i + len(group)])
                requests = [request(o) for o in group]
                response = await stub.SubmitBatch(tally_pb2.SubmitBatchRequest(items=requests))
                got = [tally_pb2.Outcome.Name(r.outcome).removeprefix("OUTCOME_") for r in response.results]
                want = [oracle.submit(o, r.form.payload) for o, r in zip(group, requests, strict=True)]
                assert got == want, (group, got, want)
                i += len(group)
                continue
            req = request(op)
            want_one = oracle.submit(op, req.form.payload)
            try:
                got_one = tally_pb2.Outcome.Name((await stub.Submit(req)).outcome).removeprefix("OUTCOME_")
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.ALREADY_EXISTS
                got_one = "CONFLICT"
            assert got_one == want_one, (op, got_one, want_one)
            i += 1

        rows = await conn.fetch(
            "SELECT tps, version, payload, outcome FROM tally.submission WHERE tps = ANY($1::text[])", slots
        )
        assert {(slots.index(r["tps"]), r["version"]): bytes(r["payload"]) for r in rows} == oracle.stored
        assert {(slots.index(r["tps"]), r["version"]): r["outcome"] for r in rows} == oracle.outcome_of
        current = await conn.fetch("SELECT tps, version FROM tally.current WHERE tps = ANY($1::text[])", slots)
        assert {slots.index(r["tps"]): r["version"] for r in current} == oracle.current
        outbox = await conn.fetch(
            "SELECT tps, version, quarantined FROM tally.outbox WHERE tps = ANY($1::text[]) ORDER BY id", slots
        )
        assert [(slots.index(r["tps"]), r["version"], r["quarantined"]) for r in outbox] == oracle.announced
    finally:
        await channel.close()
        await app.stop(0.5)
        await conn.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops_strategy)
def test_random_histories_match_the_versions_table(db_url: str, ops: list[Op]) -> None:
    asyncio.run(_run(db_url, ops))
