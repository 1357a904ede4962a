"""Connections to PostgreSQL: the pool every service uses, and one-off connections."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

# Errors that mean "the database is not there right now", as opposed to "the
# query was wrong": the caller answers UNAVAILABLE and retries later.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


async def _keep(conn: asyncpg.Connection) -> None:
    """Services keep no session state (no SET, LISTEN or temp tables), so a released connection needs no reset."""


async def create_pool(url: str, *, size: int = 8, application: str = "suara", **kwargs: Any) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        url,
        min_size=1,
        max_size=size,
        timeout=2.0,  # connect timeout: an unreachable database must not hang a call
        # Custom plans always: every hot query takes its rows as arrays (unnest), and a generic plan made
        # while the tables were nearly empty kept scanning them whole as they grew (tally's duplicate
        # check read all of tally.submission on half its calls in a load test). Planning costs far less.
        # And an index probe priced as what it is where the working set is in memory (SSD or cache): at
        # the default 4.0, a batch of 1,000 TPS joined to its rows by hashing the whole table (88 ms
        # against 12 ms for the index; 240 against 93 ms for the areas the batch adds to).
        server_settings={
            "application_name": application,
            "synchronous_commit": "on",
            "plan_cache_mode": "force_custom_plan",
            "random_page_cost": "1.1",
        },
        reset=_keep,  # the default reset costs a round trip on every release
        **kwargs,
    )


@contextlib.asynccontextmanager
async def connect(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        yield conn
    finally:
        await conn.close()
