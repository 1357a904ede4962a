"""Least privilege in PostgreSQL: each service's role writes its own schema and nothing else, reads the
registry, and the services run as those roles (in the test fixtures as `suara up` runs them)."""

from __future__ import annotations

import asyncpg
import pytest

from tests.support.databases import as_service, login_role
from tests.support.tally import Tally

SERVICES = ("tally", "aggregate", "publish")
# One write of each kind per schema, each touching no row: the privilege is checked all the same.
WRITES = {
    "tally": [
        "UPDATE tally.chain_head SET position = position WHERE false",
        "INSERT INTO tally.alarm (kind, tps, contest, version) SELECT 'x', 'x', 'x', 1 WHERE false",
        "DELETE FROM tally.outbox WHERE false",
    ],
    "aggregate": [
        "UPDATE aggregate.head SET sequence = sequence WHERE false",
        "INSERT INTO aggregate.change (sequence, contest, area) SELECT 1, 'x', 'x' WHERE false",
        "DELETE FROM aggregate.tps_result WHERE false",
    ],
    "publish": [
        "UPDATE publish.cursor SET sequence = sequence WHERE false",
        "INSERT INTO publish.history (contest, snapshot, ts, body) SELECT 'x', 1, 'x', '' WHERE false",
        "DELETE FROM publish.history WHERE false",
    ],
    "registry": [
        "UPDATE registry.contest SET name = name WHERE false",
        "INSERT INTO registry.load (areas, tps, contests) SELECT 1, 1, 1 WHERE false",
        "DELETE FROM registry.choice WHERE false",
    ],
}
READS = {
    "tally": "SELECT count(*) FROM tally.device",
    "aggregate": "SELECT count(*) FROM aggregate.tps_result",
    "publish": "SELECT count(*) FROM publish.cursor",
    "registry": "SELECT count(*) FROM registry.tps",
}


@pytest.mark.parametrize("service", SERVICES)
async def test_a_service_role_writes_its_own_schema_only_and_reads_the_registry(db_url: str, service: str) -> None:
    conn = await asyncpg.connect(as_service(db_url, service))
    try:
        assert await conn.fetchval("SELECT current_user") == login_role(service)
        for schema, statements in WRITES.items():
            for sql in statements:
                if schema == service:
                    await conn.execute(sql)
                else:
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await conn.execute(sql)
        for schema, sql in READS.items():
            if schema in (service, "registry"):
                await conn.fetchval(sql)
            else:  # another service's state is reached through its API, never its tables
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.fetchval(sql)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # nor may it change a schema
            await conn.execute(f"CREATE TABLE {service}.intruder (x int)")
    finally:
        await conn.close()


async def test_tally_in_the_fixture_connects_as_tallys_role(tally: Tally, db: asyncpg.Connection) -> None:
    users = await db.fetch(
        "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
        "suara-tally",
    )
    assert [r["usename"] for r in users] == [login_role("tally")]
