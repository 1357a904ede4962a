"""Officials who may sign recaps: each key bound to one area and role (enrolled by `suara official enroll`)."""

from __future__ import annotations

import asyncpg

from services.aggregate.queries import QUERIES
from suara.election.signing import OfficialKey


async def enroll_official(conn: asyncpg.Connection | asyncpg.Pool, key: OfficialKey, label: str) -> None:
    await conn.execute(QUERIES.enroll_official, key.official_id, key.area, key.role, key.public_key, label)
