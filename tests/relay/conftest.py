"""The relay's rig per test: the in-process tally, a fake aggregate behind the real credential check."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from suara.runtime.auth.store import credential_table_ddl, issue_service_credential
from tests.relay.rig import TABLE, FakeAggregate, Rig, start_fake
from tests.support.tally import Tally


@pytest.fixture
async def rig(tally: Tally) -> AsyncIterator[Rig]:
    await tally.db.execute("CREATE SCHEMA relay_test")
    await tally.db.execute(credential_table_ddl(TABLE))
    credential = await issue_service_credential(tally.db, "tally-relay", "writer", TABLE)
    fake = FakeAggregate()
    pool = await asyncpg.create_pool(tally.db_url, min_size=1, max_size=2)
    server, port = await start_fake(fake, pool)
    r = Rig(tally, fake, server, port, credential, pool)
    yield r
    for relay in r.relays:
        await relay.stop()
    await r.server.stop(0)
    await pool.close()
