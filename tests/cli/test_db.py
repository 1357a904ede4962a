"""`suara db …`: without DATABASE_URL, suara runs its own PostgreSQL in SUARA_DATA_DIR, as a newcomer meets it;
`db migrate` against a given database is idempotent."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from cli.components import MIGRATION_DIRS
from cli.embedded import EmbeddedPostgres
from suara.runtime.migrations import discover
from tests.support.processes import run_suara, suara_env


async def test_db_commands_run_the_embedded_server(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = suara_env(SUARA_DATA_DIR=state)  # and no DATABASE_URL
    pgdata = state / "pgdata"  # SUARA_DATA_DIR/pgdata, as the environment table documents
    server = EmbeddedPostgres(pgdata)
    migrations = [f"{m.component}/{m.name}" for m in discover(MIGRATION_DIRS)]
    assert migrations
    try:
        first = await run_suara("db", "migrate", env=env, cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        assert f"applied {len(migrations)} migration(s): " in first.stdout
        assert all(m in first.stdout for m in migrations)
        assert (pgdata / "PG_VERSION").is_file()
        assert not server.is_running(), "migrate started the server itself, so it must stop it again"

        not_running = await run_suara("db", "url", env=env, cwd=tmp_path)
        assert not_running.returncode == 0
        assert "not running" in not_running.stdout and str(pgdata) in not_running.stdout

        again = await run_suara("db", "migrate", env=env, cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert "applied 0 migration(s); already up to date" in again.stdout
        assert not server.is_running()

        started = await run_suara("db", "start", env=env, cwd=tmp_path)
        assert started.returncode == 0, started.stderr
        url = started.stdout.strip()
        assert url.startswith("postgresql://")
        assert server.is_running()
        shown = await run_suara("db", "url", env=env, cwd=tmp_path)
        assert (shown.returncode, shown.stdout.strip()) == (0, url)

        conn = await asyncpg.connect(url)
        try:
            applied = await conn.fetch("SELECT component || '/' || name FROM public.suara_migration")
            assert sorted(r[0] for r in applied) == sorted(migrations)
            assert await conn.fetchval("SELECT to_regclass('tally.submission') IS NOT NULL")
        finally:
            await conn.close()

        stopped = await run_suara("db", "stop", env=env, cwd=tmp_path)
        assert stopped.returncode == 0, stopped.stderr
        assert not server.is_running()
        with pytest.raises(OSError):
            await asyncpg.connect(url, timeout=5)
    finally:
        server.stop("immediate")  # whatever happened above, leave no server running


def test_cli_migrate_is_idempotent(
    empty_db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli import main

    monkeypatch.setenv("DATABASE_URL", empty_db)
    assert main(["db", "migrate"]) == 0
    assert "applied" in capsys.readouterr().out
    assert main(["db", "migrate"]) == 0
    assert "already up to date" in capsys.readouterr().out
