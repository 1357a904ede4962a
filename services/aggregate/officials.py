"""Officials who may sign recaps: each key bound to one area and role (enrolled by `suara official enroll`),
until revoked (`suara official revoke`). Every recap looks its official up, so a revocation bites at once."""

from __future__ import annotations

import asyncpg

from services.aggregate.admin_log import record_admin_action
from services.aggregate.queries import QUERIES
from suara.election.signing import OfficialKey


async def enroll_official(
    conn: asyncpg.Connection | asyncpg.Pool, key: OfficialKey, label: str, *, actor: str | None = None
) -> None:
    """Enroll the official's key; with an `actor`, recorded in aggregate.admin_log in the same transaction."""
    if actor is None:
        await conn.execute(QUERIES.enroll_official, key.official_id, key.area, key.role, key.public_key, label)
        return
    assert isinstance(conn, asyncpg.Connection)
    async with conn.transaction():
        await conn.execute(QUERIES.enroll_official, key.official_id, key.area, key.role, key.public_key, label)
        detail = {"area": key.area, "role": key.role, "label": label}
        await record_admin_action(conn, actor, "official.enroll", key.official_id, detail)


async def revoke_official(conn: asyncpg.Connection, official_id: str, actor: str, reason: str = "") -> str | None:
    """Revoke and record who did; "<role> of <area>", or None when no live official has that id."""
    async with conn.transaction():
        row = await conn.fetchrow(QUERIES.revoke_official, official_id)
        if row is None:
            return None
        detail = {"area": row["area"], "role": row["role"], "reason": reason}
        await record_admin_action(conn, actor, "official.revoke", official_id, detail)
    return f"{row['role']} of {row['area']}"
