"""`suara registry show` against the test database, checked against SQL."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from tests.support.processes import run_suara


async def test_registry_show_prints_the_tps_count(
    db: asyncpg.Connection, cli_env: dict[str, str], tmp_path: Path
) -> None:
    tps, dpt = await db.fetchrow("SELECT count(*), coalesce(sum(dpt), 0) FROM registry.tps")
    contests = await db.fetchval("SELECT count(*) FROM registry.contest")
    assert tps > 0
    result = await run_suara("registry", "show", env=cli_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"tps: {tps:,} with {dpt:,} voters (DPT)" in result.stdout.splitlines()
    assert f"contests: {contests}" in result.stdout.splitlines()
