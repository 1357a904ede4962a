"""The admin logs (tally.admin_log, aggregate.admin_log) are append-only: a service's role may add rows
and read them, never change or remove one; the trigger refuses that even to the schemas' owner."""

from __future__ import annotations

import asyncpg
import pytest

from tests.support.databases import as_service

SCHEMAS = ("tally", "aggregate")


@pytest.mark.parametrize("schema", SCHEMAS)
async def test_the_services_role_may_append_but_never_change_or_remove(
    schema: str, db: asyncpg.Connection, db_url: str
) -> None:
    service = await asyncpg.connect(as_service(db_url, schema))
    try:
        row = await service.fetchrow(
            f"INSERT INTO {schema}.admin_log (actor, action, subject) VALUES ('adm_x', 'device.enroll', 'd1')"
            " RETURNING id, at"
        )
        assert await service.fetchval(f"SELECT count(*) FROM {schema}.admin_log") == 1
        for change in (
            f"UPDATE {schema}.admin_log SET actor = 'someone else'",
            f"DELETE FROM {schema}.admin_log",
            f"TRUNCATE {schema}.admin_log",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await service.execute(change)
    finally:
        await service.close()
    # The owner (here the superuser that migrated) has every privilege; the trigger still says no.
    for change in (
        f"UPDATE {schema}.admin_log SET actor = 'someone else'",
        f"DELETE FROM {schema}.admin_log",
        f"TRUNCATE {schema}.admin_log",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await db.execute(change)
    kept = await db.fetchrow(f"SELECT id, at, actor, action, subject FROM {schema}.admin_log")
    assert tuple(kept) == (row["id"], row["at"], "adm_x", "device.enroll", "d1")
