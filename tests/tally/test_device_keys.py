"""Device key lookups: batched and shared between concurrent callers, so one caller's failure or
cancellation must not leak into the others (a scale-1.0 load test logged "Future exception was never
retrieved" for every device of a batch whose lookup timed out)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import asyncpg
import pytest

from services.tally.credentials import DeviceKeys, enroll_device
from suara.election.signing import DeviceKey
from suara.runtime.database import Database, DatabaseUnavailable


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
