"""aggregate.admin_log: who did what to aggregate's credentials, and when (append-only, migration 0005)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import asyncpg

from services.aggregate.queries import QUERIES


async def record_admin_action(
    conn: asyncpg.Connection | asyncpg.Pool,
    actor: str,
    action: str,
    subject: str,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """One row: `actor` did `action` (official.enroll, official.revoke, service.issue, service.revoke) to `subject`."""
    await conn.fetchrow(QUERIES.record_admin_action, actor, action, subject, json.dumps(dict(detail or {})))


async def admin_log(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Every row, oldest first."""
    return list(await conn.fetch(QUERIES.admin_log))
