"""`suara db migrate`: ordered, each component in its own schema, safe twice and concurrently."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from cli.components import MIGRATION_DIRS
from suara.runtime.migrations import Migration, MigrationError, discover, migrate


async def test_each_component_gets_its_own_schema(empty_db: str) -> None:
    conn = await asyncpg.connect(empty_db)
    try:
        applied = await migrate(conn, discover(MIGRATION_DIRS))
        assert [m.component for m in applied] == sorted(
            (m.component for m in applied), key=[c for c, _ in MIGRATION_DIRS].index
        )
        schemas = {r["nspname"] for r in await conn.fetch("SELECT nspname FROM pg_namespace")}
        assert {c for c, _ in MIGRATION_DIRS} <= schemas
    finally:
        await conn.close()


async def test_migrating_twice_applies_nothing_the_second_time(empty_db: str) -> None:
    conn = await asyncpg.connect(empty_db)
    try:
        first = await migrate(conn, discover(MIGRATION_DIRS))
        second = await migrate(conn, discover(MIGRATION_DIRS))
        assert len(first) == len(discover(MIGRATION_DIRS)) and second == []
    finally:
        await conn.close()


async def test_two_processes_migrating_at_once_apply_each_file_once(empty_db: str) -> None:
    conns = [await asyncpg.connect(empty_db) for _ in range(2)]
    try:
        results = await asyncio.gather(*(migrate(c, discover(MIGRATION_DIRS)) for c in conns))
        assert sorted(len(r) for r in results) == [0, len(discover(MIGRATION_DIRS))]
        rows = await conns[0].fetch("SELECT component, name FROM public.suara_migration")
        assert len(rows) == len(discover(MIGRATION_DIRS))
    finally:
        for c in conns:
            await c.close()


async def test_an_edited_applied_migration_is_refused(empty_db: str, tmp_path: Path) -> None:
    conn = await asyncpg.connect(empty_db)
    try:
        await migrate(conn, [Migration("demo", "0001_a.sql", "CREATE SCHEMA demo;")])
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn, [Migration("demo", "0001_a.sql", "CREATE SCHEMA demo; -- edited")])
    finally:
        await conn.close()
