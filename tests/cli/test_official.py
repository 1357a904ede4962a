"""`suara official enroll`: a recap official's key, bound to one area and role."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import asyncpg

from suara.election.signing import OfficialKey
from tests.support.factories import TEST_ELECTION
from tests.support.processes import run_suara


async def test_enroll_writes_a_private_key_bound_to_the_area(
    cli_env: dict[str, str], db: asyncpg.Connection, tmp_path: Path
) -> None:
    area = await db.fetchval("SELECT code FROM registry.area WHERE level = 3 ORDER BY code LIMIT 1")
    out = tmp_path / "ppk.key.json"
    result = await run_suara(
        "official", "enroll", "--area", area, "--role", "ppk", "--out", str(out), env=cli_env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    key = OfficialKey.load(out)
    assert key.election_id == TEST_ELECTION  # the registry's: the official signs it into every recap
    row = await db.fetchrow(
        "SELECT area, role, public_key FROM aggregate.official WHERE official_id = $1", key.official_id
    )
    assert (row["area"], row["role"], bytes(row["public_key"])) == (area, "ppk", key.public_key)


async def test_a_role_that_does_not_fit_the_area_is_refused(
    cli_env: dict[str, str], db: asyncpg.Connection, tmp_path: Path
) -> None:
    province = await db.fetchval("SELECT code FROM registry.area WHERE level = 1 ORDER BY code LIMIT 1")
    result = await run_suara("official", "enroll", "--area", province, "--role", "ppk", env=cli_env, cwd=tmp_path)
    assert result.returncode == 2 and "ppk" in result.stderr
    assert not any(p.name.endswith(".key.json") for p in await asyncio.to_thread(lambda: list(tmp_path.iterdir())))
    assert await db.fetchval("SELECT count(*) FROM aggregate.official") == 0
