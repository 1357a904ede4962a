"""tally's outbox relay against a fake aggregate (see rig.py: it stands in for the aggregate
service until the integration tests are added), with forms entering the outbox through the real tally.

The oracle is the forms the test itself submitted, in the order tally stored
them; nothing here asks the relay what it thinks it sent.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from pathlib import Path
from typing import cast

import grpc
import pytest

from services.tally.relay import APPLICATION_NAME, APPLY_METHOD, relay_for
from suara.runtime.auth.credential import ServiceCredential
from suara.runtime.backoff import Backoff
from suara.runtime.settings import DatabaseSettings, RelaySettings, SettingError, Settings, TlsSettings
from suara.v1 import aggregate_pb2, aggregate_pb2_grpc
from tests.relay.rig import TABLE, Rig, received_update
from tests.support.pki import suite_pki, with_tls
from tests.support.waiting import WAIT_S


async def test_every_row_is_delivered_as_stored_in_arrival_order(rig: Rig) -> None:
    keys = await rig.submit(250)
    assert await rig.outbox_keys() == keys  # one outbox row per form, in the order they were submitted
    relay = rig.relay(batch=100)
    await rig.drained(relay)
    got = [received_update(u) for batch in rig.fake.confirmed for u in batch]
    assert got == rig.expected(keys)
    assert [len(b) for b in rig.fake.confirmed] == [100, 100, 50]
    assert rig.quarantined and all(
        bool(u.failed_checks) == ((u.tps, u.contest, u.version) in rig.quarantined)
        for batch in rig.fake.confirmed
        for u in batch
    )
    stored = {
        (r["tps"], r["contest"], r["version"]): list(r["failed_checks"])
        for r in await rig.db.fetch("SELECT tps, contest, version, failed_checks FROM tally.outbox")
    }
    assert all(list(u.failed_checks) == stored[(u.tps, u.contest, u.version)] for b in rig.fake.confirmed for u in b)
    assert await rig.pending() == 0


async def test_nothing_is_marked_delivered_until_aggregate_confirms(rig: Rig) -> None:
    await rig.submit(30)
    rig.fake.hold = asyncio.Event()
    rig.relay(batch=10)
    await rig.fake.wait_for(lambda: len(rig.fake.received) == 1)
    assert await rig.pending() == 30  # the batch is at aggregate, but not confirmed yet
    rig.fake.hold.set()
    await rig.drained()
    assert rig.fake.delivered_keys() == await rig.outbox_keys()


async def test_a_failing_aggregate_leaves_every_row_pending_then_everything_drains(rig: Rig) -> None:
    keys = await rig.submit(60)
    rig.fake.unavailable_for = 10**9  # down until told otherwise
    relay = rig.relay(batch=25)
    await rig.fake.wait_for(lambda: rig.fake.attempts >= 8)  # retried, with backoff, again and again
    assert rig.fake.received == [] and await rig.pending() == 60
    rig.fake.unavailable_for = 0
    await rig.drained()
    assert relay.backoff.failures == 0  # reset by the first success
    # Refused calls did nothing, so after the outage each row arrived once, in order, as full batches.
    assert rig.fake.delivered_keys() == keys
    assert [len(b) for b in rig.fake.confirmed] == [25, 25, 10]


async def test_a_lost_reply_resends_the_same_batch(rig: Rig) -> None:
    keys = await rig.submit(120)
    rig.fake.drop_replies = 1
    rig.relay(batch=50)
    await rig.drained()
    received = [[(u.tps, u.version) for u in batch] for batch in rig.fake.received]
    assert received[0] == received[1]  # applied, reply lost, sent again: at-least-once
    assert len(received) == 4
    assert rig.fake.delivered_keys() == keys  # and what was confirmed is the outbox, once, in order


async def test_aggregate_restarting_loses_nothing(rig: Rig) -> None:
    first = await rig.submit(40)
    relay = rig.relay(batch=1000)
    await rig.drained(relay)
    await rig.server.stop(0)  # aggregate goes away...
    second = await rig.submit(40)  # ...tally keeps accepting...
    assert await rig.pending() == 40
    await rig.restart_aggregate()  # ...and when it is back, the backlog drains
    await rig.drained(relay)
    assert rig.fake.delivered_keys() == first + second


async def test_the_database_connection_dropping_loses_nothing(rig: Rig) -> None:
    first = await rig.submit(20)
    relay = rig.relay()
    await rig.drained(relay)
    killed = await rig.db.fetchval(
        # This test's database only: on a shared server other tests' relays use the same name.
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE application_name = $1 AND datname = current_database()",
        APPLICATION_NAME,
    )
    assert killed == 1
    second = await rig.submit(20)
    await rig.drained(relay)
    assert relay.active
    assert rig.fake.delivered_keys() == first + second


async def test_new_rows_wake_the_relay_without_waiting_for_the_poll(rig: Rig) -> None:
    relay = rig.relay(poll_interval_s=3600.0)  # only a notification can wake it within the test
    await relay.wait_caught_up()  # idle on an empty outbox
    keys = await rig.submit(5)
    await rig.fake.wait_for(lambda: len(rig.fake.confirmed) == 1)
    assert rig.fake.delivered_keys() == keys


async def test_two_relays_at_once_deliver_every_row_and_one_takes_over_from_the_other(rig: Rig) -> None:
    keys = await rig.submit(300)
    a, b = rig.relay(batch=40), rig.relay(batch=40)
    more = await rig.submit(100)  # arriving while they run
    await rig.drained(a, b)
    assert set(rig.fake.delivered_keys()) == set(keys + more) == set(await rig.outbox_keys())
    assert sorted([a.active, b.active]) == [False, True]  # one delivers; the other stands by
    active, standby = (a, b) if a.active else (b, a)
    await active.stop()
    last = await rig.submit(50)
    await rig.drained(standby)
    assert standby.active
    assert set(rig.fake.delivered_keys()) == set(keys + more + last)


async def test_a_standby_tries_for_the_lock_once_per_poll_not_once_per_notification(rig: Rig) -> None:
    active = rig.relay()
    await active.wait_caught_up()
    assert active.active
    standby = rig.relay(poll_interval_s=3600.0)
    await standby.wait_lock_attempts(1)
    for _ in range(5):  # each commit notifies both relays
        await rig.submit(20)
        await rig.drained(active)
    assert not standby.active
    assert standby.lock_attempts == 1, "a standby woken by every commit would retry the lock in a busy loop"


async def test_a_backlog_drains_in_full_batches(rig: Rig) -> None:
    keys = await rig.submit(5000, stations=500)
    relay = rig.relay(batch=1000)
    await asyncio.wait_for(rig.drained(relay), WAIT_S)
    assert [len(b) for b in rig.fake.confirmed] == [1000] * 5
    assert rig.fake.delivered_keys() == keys
    assert relay.delivered == 5000 and relay.calls == 5
    assert relay.backoff.failures == 0  # never backed off: no pause between full batches


async def test_the_fake_is_behind_the_real_credential_check(rig: Rig) -> None:
    """So every delivery above also proves that the relay signs its calls as a writer."""
    from suara.runtime.auth.store import issue_service_credential

    reader = await issue_service_credential(rig.db, "publish", "reader", TABLE)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{rig.port}")
    try:
        stub = cast("aggregate_pb2_grpc.AggregateServiceAsyncStub", aggregate_pb2_grpc.AggregateServiceStub(channel))  # type: ignore[redundant-cast]  # runtime: a type-only name
        request = aggregate_pb2.ApplyUpdatesRequest()
        for metadata, code in (
            ((), grpc.StatusCode.UNAUTHENTICATED),
            (reader.metadata(APPLY_METHOD), grpc.StatusCode.PERMISSION_DENIED),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ApplyUpdates(request, metadata=metadata, timeout=WAIT_S)
            assert refused.value.code() == code
        await stub.ApplyUpdates(request, metadata=rig.credential.metadata(APPLY_METHOD), timeout=WAIT_S)
    finally:
        await channel.close()
    assert rig.fake.attempts == 1  # only the writer's call reached the servicer


def test_backoff_is_full_jitter_under_a_cap() -> None:
    backoff = Backoff(0.1, 2.0, random.Random(7))  # seeded: the draws below are the same every run
    delays = [backoff.next_delay() for _ in range(200)]
    assert all(0.0 <= d <= 2.0 for d in delays)
    assert max(delays[:1]) <= 0.1 and max(delays[50:]) > 0.2  # grows, then stays under the cap
    backoff.reset()
    assert backoff.next_delay() <= 0.1


def test_tally_runs_the_relay_only_with_a_writer_credential(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, tls=TlsSettings(insecure=True))  # token credentials: plaintext only
    assert relay_for(settings, "postgresql://unused") is None  # no credential: tally runs without a relay
    ServiceCredential.generate("publish", "reader").save(tmp_path / "relay.key.json")
    with pytest.raises(ValueError, match="writer"):
        relay_for(settings, "postgresql://unused")
    writer = ServiceCredential.generate("tally-relay", "writer")
    writer.save(tmp_path / "elsewhere.json")
    relay = relay_for(replace(settings, relay=RelaySettings(credential=str(tmp_path / "elsewhere.json"), batch=7)), "x")
    assert relay is not None and relay.credential.id == writer.id and relay.batch == 7
    assert relay.aggregate_address == settings.peers.aggregate == "127.0.0.1:50062"  # aggregate's internal port
    assert relay.tls is None


def test_under_tls_the_relay_presents_a_writer_certificate_and_refuses_a_token(tmp_path: Path) -> None:
    pki = suite_pki()
    settings = with_tls(Settings(data_dir=tmp_path))
    relay = relay_for(replace(settings, relay=RelaySettings(credential=str(pki.bundle("tally-relay", "writer")))), "x")
    assert relay is not None and relay.credential.role == "writer" and relay.tls is not None
    assert relay.tls.identity is not None and relay.tls.ca_pem == pki.ca.read_bytes()
    with pytest.raises(ValueError, match="writer"):  # a reader's certificate is no relay's
        relay_for(replace(settings, relay=RelaySettings(credential=str(pki.bundle("publish", "reader")))), "x")
    ServiceCredential.generate("tally-relay", "writer").save(tmp_path / "token.json")
    with pytest.raises(SettingError, match="SUARA_INSECURE"):  # a replayable token is refused under TLS
        relay_for(replace(settings, relay=RelaySettings(credential=str(tmp_path / "token.json"))), "x")


async def test_suara_service_relay_refuses_to_start_without_a_credential(tmp_path: Path) -> None:
    import argparse

    from cli.service import run_relay

    args = argparse.Namespace(aggregate="127.0.0.1:1", credential=tmp_path / "missing.json", batch=None)
    assert await run_relay(args, Settings(database=DatabaseSettings(url="postgresql://unused"), data_dir=tmp_path)) == 2


async def test_suara_service_issue_explains_a_missing_table(db_url: str, tmp_path: Path) -> None:
    import argparse

    from cli.service import run_issue

    args = argparse.Namespace(name="x", role="reader", out=None, table="nowhere.service_credential", force=False)
    assert await run_issue(args, Settings(database=DatabaseSettings(url=db_url), data_dir=tmp_path)) == 2
    assert not (tmp_path / "x.key.json").exists()
