"""A running aggregate per test, on a free port, against the test's own database (tests/support/aggregate.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.support.aggregate import Aggregate, start_aggregate
from tests.support.databases import fresh_database


@pytest.fixture
async def aggregate(db_url: str, db: asyncpg.Connection) -> AsyncIterator[Aggregate]:
    a = await start_aggregate(db_url, db)
    yield a
    await a.close()


@pytest.fixture
async def other_db_url(pg_server: str, template_db: str) -> AsyncIterator[str]:
    """A second fresh database with the same registry: another aggregate instance's."""
    async with fresh_database(pg_server, template_db) as url:
        yield url
