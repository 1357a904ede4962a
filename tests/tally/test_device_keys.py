"""Device key lookups: batched and shared between concurrent callers, so one caller's failure or
cancellation must not leak into the others (a scale-1.0 load test logged "Future exception was never
retrieved" for every device of a batch whose lookup timed out). A revocation reaches the cache by its
notification, and by the entry's expiry when the notification was missed."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import asyncpg
import pytest

from services.tally.credentials import REVOKED_CHANNEL, DeviceKeys, enroll_device
from suara.election.signing import DeviceKey
from suara.runtime.database import Database, DatabaseUnavailable
from suara.runtime.notifications import ChannelListener
from tests.support.databases import as_service
from tests.support.waiting import poll_until, within


async def test_a_failed_lookup_raises_for_every_caller_and_leaves_no_failure_unread(db_url: str) -> None:
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=1)
    await pool.close()  # every query on it fails: as a lookup that timed out would
    keys = DeviceKeys(Database(pool))
    loop = asyncio.get_running_loop()
    unread: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: unread.append(context))
    try:
        for ids in (["a", "b", "c"], ["d"]):
            with pytest.raises(DatabaseUnavailable):
                await keys.get_many(ids)
        gc.collect()  # a future whose failure nobody read reports it when it is collected
    finally:
        loop.set_exception_handler(previous)
    assert [c.get("message") for c in unread] == []


async def test_a_cancelled_caller_does_not_cancel_the_lookup_another_caller_waits_on(
    db_url: str, db: asyncpg.Connection
) -> None:
    tps = await db.fetchval("SELECT code FROM registry.tps ORDER BY code LIMIT 1")
    key = DeviceKey.generate(tps)
    await enroll_device(db, key.device_id, tps, key.public_key, "test")
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=1)
    try:
        keys = DeviceKeys(Database(pool))
        first = asyncio.create_task(keys.get_many([key.device_id]))
        second = asyncio.create_task(keys.get_many([key.device_id]))
        await asyncio.sleep(0)  # the first starts the lookup, the second joins it, before it is sent
        first.cancel()  # e.g. its client's deadline passed
        found = await second
        assert found[key.device_id].tps == tps
        assert found[key.device_id].public_key == key.public_key
        with pytest.raises(asyncio.CancelledError):
            await first
    finally:
        await pool.close()


async def test_a_revocation_whose_notification_is_missed_still_bites_when_the_entry_expires(
    db_url: str, db: asyncpg.Connection
) -> None:
    tps = await db.fetchval("SELECT code FROM registry.tps ORDER BY code LIMIT 1")
    key = DeviceKey.generate(tps)
    await enroll_device(db, key.device_id, tps, key.public_key, "test")
    db_pool = await Database.open(as_service(db_url, "tally"), size=1)
    try:
        ttl_s = 0.3
        keys = DeviceKeys(db_pool, ttl_s=ttl_s)
        assert not (await keys.get_many([key.device_id]))[key.device_id].revoked
        # Nobody hears this one (the trigger off: as a listener that was away when it was sent).
        await db.execute("ALTER TABLE tally.device DISABLE TRIGGER device_revoked")
        await db.execute("UPDATE tally.device SET revoked_at = now() WHERE device_id = $1", key.device_id)
        revoked_at = asyncio.get_running_loop().time()
        assert not (await keys.get_many([key.device_id]))[key.device_id].revoked  # the cache still has it

        async def refused() -> bool:
            return (await keys.get_many([key.device_id]))[key.device_id].revoked

        await poll_until(refused, "the cached key expired", within_s=ttl_s + 1.0)
        assert asyncio.get_running_loop().time() - revoked_at >= ttl_s * 0.9  # the expiry, not a lookup, did it
    finally:
        await db_pool.close()


async def test_the_revocation_listener_reconnects_and_forgets_what_it_may_have_missed(
    db_url: str, db: asyncpg.Connection
) -> None:
    messages: list[str] = []
    resets: list[int] = []
    listener = ChannelListener(
        as_service(db_url, "tally"), REVOKED_CHANNEL, messages.append, lambda: resets.append(1),
        application="test-revocations", probe_s=0.2,
    )  # fmt: skip
    listener.start()
    try:
        await within(listener.listening.wait(), "listening")
        assert (listener.connections, len(resets)) == (1, 1)
        await db.execute("SELECT pg_notify($1, 'device:dev_a')", REVOKED_CHANNEL)
        await poll_until(lambda: _true(messages == ["device:dev_a"]), "the first notification", within_s=5)

        # Its connection goes (a database restart, a network cut): it listens again, and forgets all.
        pid = await db.fetchval("SELECT pid FROM pg_stat_activity WHERE application_name = 'test-revocations'")
        await db.execute("SELECT pg_terminate_backend($1)", pid)
        await poll_until(lambda: _true(listener.connections == 2 and listener.listening.is_set()), "again", 10)
        assert len(resets) >= 3  # on the loss, and on listening again
        await db.execute("SELECT pg_notify($1, 'admin:adm_b')", REVOKED_CHANNEL)
        await poll_until(lambda: _true(messages[-1:] == ["admin:adm_b"]), "a notification after it", within_s=5)
    finally:
        await listener.stop()


async def _true(value: bool) -> bool:
    return value
