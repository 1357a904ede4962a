"""The recap official's client against a real aggregate: sign into the outbox, send, and never lose or
double a recap, whatever the network and the machine do.

The oracle is what the test had the official sign (kept in plain Python as it is signed) and
aggregate's own table of recaps, read directly.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.aggregate.officials import enroll_official
from suara.client.outbox import Outbox, OutboxConflict, WrongKind
from suara.client.recap import RecapClient, RecapError, recap_of
from suara.election.recap_sheet import Choice, Counts, Snapshot, Unit, vote_field
from suara.election.signing import OfficialKey
from suara.v1 import aggregate_pb2
from tests.client.doubles import Network, Waits
from tests.support.aggregate import Aggregate, start_aggregate
from tests.support.factories import TEST_ELECTION
from tests.support.pki import suite_pki
from tests.support.ports import closed_port


@dataclass
class Area:
    key: OfficialKey
    snapshot: Snapshot


@pytest.fixture
async def aggregate(db_url: str, db: asyncpg.Connection) -> AsyncIterator[Aggregate]:
    a = await start_aggregate(db_url, db)
    yield a
    await a.close()


async def enrolled_area(db: asyncpg.Connection) -> Area:
    """A kecamatan with its TPS as the sheet's units, and a PPK enrolled for it."""
    row = await db.fetchrow(
        "SELECT left(code, 6) AS k, array_agg(code ORDER BY code) AS tps FROM registry.tps"
        " GROUP BY 1 HAVING count(*) >= 2 ORDER BY 1 LIMIT 1"
    )
    choices = [
        Choice(r["id"], r["nama"], r["nomor_urut"])
        for r in await db.fetch("SELECT id, nama, nomor_urut FROM registry.choice WHERE contest = 'ppwp' ORDER BY 3")
    ]
    key = OfficialKey.generate(row["k"], "ppk", TEST_ELECTION)
    await enroll_official(db, key, "test")
    units = [Unit(code, f"TPS {code[-3:]}", None) for code in row["tps"]]
    snapshot = Snapshot(row["k"], "ppwp", "KEC", choices, units, "test", "2024-02-14T13:00:00Z")
    return Area(key, snapshot)


def counts_for(area: Area, seed: int) -> Counts:
    """The area's paper total in the plenary: a different one per seed."""
    counts = {vote_field(c.id): 100 * (i + 1) + seed for i, c in enumerate(area.snapshot.choices)}
    sah = sum(counts.values())
    counts.update(suara_sah=sah, suara_tidak_sah=seed, suara_total=sah + seed, dpt=5000, pengguna=sah + seed + 3)
    return counts


async def stored(db: asyncpg.Connection, area: str) -> dict[int, bytes]:
    rows = await db.fetch("SELECT version, payload FROM aggregate.recap WHERE area = $1", area)
    assert len(rows) == len({r["version"] for r in rows})  # aggregate's constraint, checked all the same
    return {r["version"]: bytes(r["payload"]) for r in rows}


async def open_client(path: Path, target: str, **options: Any) -> RecapClient:
    """As an official's laptop has it: verifying aggregate's certificate, no certificate of its own."""
    return await RecapClient.open(path, target, tls=suite_pki().client_tls(), **options)


async def test_a_recap_signed_offline_is_kept_and_sent_when_the_network_returns(
    aggregate: Aggregate, tmp_path: Path
) -> None:
    area = await enrolled_area(aggregate.db)
    path = tmp_path / "outbox.sqlite3"
    async with await open_client(path, f"127.0.0.1:{closed_port()}", sleep=Waits(), call_timeout_s=5) as offline:
        entry, put = await offline.store_recap(area.key, "ppwp", counts_for(area, 1), area.snapshot)
        assert put == "new" and entry.version == 1 and entry.kind == "recap"
        attempt = await offline.send(entry)
        assert attempt.retry and attempt.entry.state == "pending"
        assert attempt.entry.last_error is not None and attempt.entry.last_error.startswith("aggregate unreachable")
    assert await stored(aggregate.db, area.key.area) == {}

    async with await open_client(path, f"127.0.0.1:{aggregate.app.port}") as back:
        report = await back.flush()
    (sent,) = report.sent
    assert sent.outcome == "ACCEPTED" and sent.current_version == 1
    assert await stored(aggregate.db, area.key.area) == {1: entry.payload}  # the exact bytes signed offline
    recap_id = await aggregate.db.fetchval("SELECT id::text FROM aggregate.recap WHERE area = $1", area.key.area)
    assert sent.receipt is not None and sent.receipt.submission_id == recap_id
    got = (
        await aggregate.stub.GetReconciliation(
            aggregate_pb2.GetReconciliationRequest(area=area.key.area, contest="ppwp")
        )
    ).reconciliation
    assert got.recap_version == 1 and got.recap == recap_of(entry).totals


async def test_signing_the_same_numbers_again_is_the_same_recap_and_other_numbers_the_next_version(
    aggregate: Aggregate, tmp_path: Path
) -> None:
    area = await enrolled_area(aggregate.db)
    async with await open_client(tmp_path / "o.sqlite3", f"127.0.0.1:{aggregate.app.port}") as client:
        first, _ = await client.store_recap(area.key, "ppwp", counts_for(area, 1), area.snapshot)
        assert (await client.send(first)).outcome == "ACCEPTED"
        again, put = await client.store_recap(area.key, "ppwp", counts_for(area, 1), area.snapshot)
        assert put == "exists" and again.payload == first.payload and again.state == "sent"
        assert (await client.send(again)).outcome == "DUPLICATE"  # a resend: the same recap id
        assert (await client.outbox.get(*again.key)) is not None
        correction, put = await client.store_recap(area.key, "ppwp", counts_for(area, 2), area.snapshot)
        assert put == "new" and correction.version == 2
        assert (await client.send(correction)).outcome == "ACCEPTED"
        with pytest.raises(RecapError, match="sheet is of area"):
            other = Snapshot("999999", "ppwp", "X", area.snapshot.choices, [], "t", "t")
            await client.store_recap(area.key, "ppwp", counts_for(area, 1), other)
        # Locally, as at aggregate, a version holds one payload.
        with pytest.raises(OutboxConflict, match="higher version"):
            signed = await client.store_recap(area.key, "ppwp", counts_for(area, 3), area.snapshot)
            await client.outbox.put(signed[0].payload[:-1] + b"\x01", signed[0].signature, area.key.official_id)
    assert sorted(await stored(aggregate.db, area.key.area)) == [1, 2]


async def test_a_version_taken_at_aggregate_is_refused_and_the_next_signing_goes_above_it(
    aggregate: Aggregate, tmp_path: Path
) -> None:
    area = await enrolled_area(aggregate.db)
    async with await open_client(tmp_path / "o.sqlite3", f"127.0.0.1:{aggregate.app.port}") as client:
        # The same official signed version 1 on another laptop, with other numbers, and it got there first.
        async with await open_client(tmp_path / "other.sqlite3", f"127.0.0.1:{aggregate.app.port}") as laptop:
            elsewhere, _ = await laptop.store_recap(area.key, "ppwp", counts_for(area, 7), area.snapshot)
            await laptop.send(elsewhere)
        mine, _ = await client.store_recap(area.key, "ppwp", counts_for(area, 1), area.snapshot)
        refused = await client.send(mine)
        assert refused.entry.state == "rejected" and refused.entry.last_code == "ALREADY_EXISTS"
        assert (await client.flush()).attempts == 0  # final: resending would be refused again
        again, put = await client.store_recap(area.key, "ppwp", counts_for(area, 1), area.snapshot)
        assert put == "new" and again.version == 2
        assert (await client.send(again)).outcome == "ACCEPTED"
    assert await stored(aggregate.db, area.key.area) == {1: elsewhere.payload, 2: again.payload}


async def test_an_outbox_is_of_one_kind(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    async with await Outbox.open(path):  # a device's
        pass
    with pytest.raises(WrongKind, match=r"device's outbox of C\.Hasil forms, not a recap official's"):
        await Outbox.open(path, "recap")
    recaps = tmp_path / "recaps.sqlite3"
    async with await Outbox.open(recaps, "recap"):
        pass
    with pytest.raises(WrongKind, match="recap official's outbox of recaps, not a device's"):
        await Outbox.open(recaps)


@dataclass(frozen=True)
class Step:
    kind: str  # sign numbers, cut or restore the network, flush, restart, or a lost reply
    seed: int  # which numbers a sign step signs


steps_strategy = st.lists(
    st.one_of(
        st.builds(Step, kind=st.just("sign"), seed=st.integers(0, 2)),
        st.builds(
            Step, kind=st.sampled_from(["cut", "restore", "flush", "restart", "crash", "lost_reply"]), seed=st.just(0)
        ),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=steps_strategy)
async def test_every_signed_recap_reaches_aggregate_exactly_once_whatever_the_network_does(
    aggregate: Aggregate, tmp_path: Path, steps: list[Step]
) -> None:
    area = await enrolled_area(aggregate.db)
    await aggregate.db.execute("DELETE FROM aggregate.recap WHERE area = $1", area.key.area)  # each example afresh
    network = await Network(aggregate.app.port).start()
    path = tmp_path / f"{uuid.uuid4().hex}.sqlite3"

    async def reopen() -> RecapClient:
        return await open_client(path, network.target, sleep=Waits(), call_timeout_s=5.0)

    client = await reopen()
    crashed: list[RecapClient] = []
    signed: dict[int, bytes] = {}  # version -> the bytes the official signed: the oracle
    newest: Counts | None = None
    try:
        for step in steps:
            if step.kind == "sign":
                counts = counts_for(area, step.seed)
                entry, put = await client.store_recap(area.key, "ppwp", counts, area.snapshot)
                if counts == newest:
                    assert put == "exists" and entry.payload == signed[entry.version]  # never re-signed
                else:
                    assert put == "new" and entry.version == len(signed) + 1
                signed[entry.version] = entry.payload
                newest = counts
                await client.send(entry)  # `suara recap sign`'s one attempt
            elif step.kind == "cut":
                network.cut()
            elif step.kind == "restore":
                network.restore()
            elif step.kind == "flush":
                await client.flush(deadline_s=0)
            elif step.kind == "restart":  # the laptop is switched off and on: a new process, the same file
                await client.close()
                client = await reopen()
            elif step.kind == "crash":  # the process dies: its file is left as it is, never closed
                await client._drop_channel()
                crashed.append(client)
                client = await reopen()
            elif step.kind == "lost_reply" and (pending := await client.outbox.pending()):
                # The oldest waiting recap reaches aggregate, but the answer never comes back.
                e = pending[0]
                await aggregate.stub.SubmitRecap(
                    aggregate_pb2.SubmitRecapRequest(
                        recap=aggregate_pb2.SignedRecap(
                            payload=e.payload, signature=e.signature, official_id=e.device_id
                        )
                    )
                )
        network.restore()
        async with asyncio.timeout(30):
            report = await client.flush()
        assert report.complete
        entries = await client.outbox.entries()
    finally:
        for left in [client, *crashed]:
            await left.close()
        await network.close()

    assert {e.version: e.payload for e in entries} == signed
    assert all(e.state == "sent" and e.receipt is not None for e in entries)
    at_aggregate = await stored(aggregate.db, area.key.area)
    assert at_aggregate == signed  # every signed recap once, nothing else
    ids = dict(await aggregate.db.fetch("SELECT version, id::text FROM aggregate.recap WHERE area = $1", area.key.area))
    assert {e.version: e.receipt.submission_id for e in entries if e.receipt} == ids
    if signed:
        reconciliation = (
            await aggregate.stub.GetReconciliation(
                aggregate_pb2.GetReconciliationRequest(area=area.key.area, contest="ppwp")
            )
        ).reconciliation
        assert reconciliation.recap_version == max(signed)
        assert reconciliation.recap == aggregate_pb2.RecapForm.FromString(signed[max(signed)]).totals
