"""The relay's dead letters (tally.dead_letter): outbox rows set aside so that the rest drains.

An operator lists them (`suara tally dead-letters`), repairs the cause (a registry that lacked the
TPS, an aggregate that refused what it should take, a row corrupted in the database), then hands
them back to the relay (`suara tally dead-letters redeliver`), which sends them again in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.tally.queries import QUERIES


@dataclass(frozen=True)
class DeadLetter:
    outbox_id: int
    tps: str
    contest: str
    version: int
    reason: str
    fields: tuple[str, ...]
    attempts: int
    dead_at: datetime
    redelivered_at: datetime | None


async def dead_letters(conn: asyncpg.Connection, *, include_redelivered: bool = False) -> list[DeadLetter]:
    """The dead letters by outbox id; only those still set aside unless `include_redelivered`."""
    rows = await conn.fetch(QUERIES.dead_letters, include_redelivered)
    return [DeadLetter(**{**dict(r), "fields": tuple(r["fields"])}) for r in rows]


async def redeliver(conn: asyncpg.Connection, outbox_ids: list[int] | None) -> list[int]:
    """Hand these dead letters (every one still set aside when None) back to the relay; the ids handed back."""
    rows = await conn.fetch(QUERIES.dead_letters_redeliver, outbox_ids)
    return sorted(r["id"] for r in rows)
