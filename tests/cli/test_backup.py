"""`suara db backup` / `suara db restore` (pg_basebackup, pg_verifybackup): a round trip gives back every row;
what cannot be restored is refused with what to do next. The drill under load is in test_backup_drill.py."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from cli.embedded import OWNER_ROLE, SUPERUSER, EmbeddedPostgres
from tests.support.processes import run_suara, running, suara_env
from tests.support.waiting import poll_until

ROWS = 5000
ADD = "INSERT INTO public.drill SELECT n, $3 FROM generate_series($1::int, $2::int) n"


async def _fill(url: str) -> list[tuple[int, str]]:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE public.drill (n int PRIMARY KEY, v text NOT NULL)")
        await conn.execute("INSERT INTO public.drill SELECT n, md5(n::text) FROM generate_series(1, $1) n", ROWS)
        return [tuple(r) for r in await conn.fetch("SELECT n, v FROM public.drill ORDER BY n")]
    finally:
        await conn.close()


async def _rows(url: str) -> list[tuple[int, str]]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await conn.fetch("SELECT n, v FROM public.drill ORDER BY n")]
    finally:
        await conn.close()


async def test_backup_then_restore_into_a_fresh_data_dir_gives_back_every_row(tmp_path: Path) -> None:
    source, target, backup = tmp_path / "source", tmp_path / "target", tmp_path / "backup"
    server = EmbeddedPostgres(source / "pgdata")
    restored = EmbeddedPostgres(target / "pgdata")
    try:
        migrated = await run_suara("db", "migrate", env=suara_env(SUARA_DATA_DIR=source), cwd=tmp_path)
        assert migrated.returncode == 0, migrated.stderr
        server.start()
        rows = await _fill(server.url(role=OWNER_ROLE))
        made = await run_suara("db", "backup", str(backup), env=suara_env(SUARA_DATA_DIR=source), cwd=tmp_path)
        assert made.returncode == 0, made.stderr
        assert made.stdout.startswith(f"backup: {backup}") and "verified" in made.stdout
        assert {p.name for p in backup.iterdir()} == {"base.tar.gz", "pg_wal.tar.gz", "backup_manifest"}
        assert "backup successfully verified" in made.stderr  # pg_verifybackup's own word, on stderr
        assert server.is_running(), "a backup of a running server leaves it running"

        again = await run_suara("db", "backup", str(backup), env=suara_env(SUARA_DATA_DIR=source), cwd=tmp_path)
        assert again.returncode == 1 and "is not empty" in again.stderr

        server.stop()  # the source is gone: only the backup is left
        env = suara_env(SUARA_DATA_DIR=tmp_path / "unused")
        back = await run_suara("db", "restore", str(backup), "--data-dir", str(target), env=env, cwd=tmp_path)
        assert back.returncode == 0, back.stderr
        assert f"suara up --data-dir {target}" in back.stdout
        assert not restored.is_running(), "restore starts the server once and stops it again"

        restored.start()
        assert await _rows(restored.url(role=OWNER_ROLE)) == rows
        # New passwords, and nothing trusted any more (restore trusted the superuser until the first start).
        assert restored.password(OWNER_ROLE) != server.password(OWNER_ROLE)
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(f"postgresql://{SUPERUSER}@/postgres?host={restored.pgdata}&port={restored.port}")
        assert "trust" not in (restored.pgdata / "pg_hba.conf").read_text()
        migrate = await run_suara("db", "migrate", env=suara_env(SUARA_DATA_DIR=target), cwd=tmp_path)
        assert migrate.returncode == 0 and "0 migration(s)" in migrate.stdout, migrate.stderr
        restored.stop()

        over = await run_suara("db", "restore", str(backup), "--data-dir", str(target), env=env, cwd=tmp_path)
        assert over.returncode == 1 and "is not empty" in over.stderr, "a restore never overwrites"
        nothing = await run_suara("db", "restore", str(source), "--pgdata", str(tmp_path / "x"), env=env, cwd=tmp_path)
        assert nothing.returncode == 1 and "has no backup_manifest" in nothing.stderr

        # One byte changed in the backup: refused before anything is unpacked.
        base = backup / "base.tar.gz"
        data = bytearray(base.read_bytes())
        data[len(data) // 2] ^= 0xFF
        base.write_bytes(bytes(data))
        damaged = await run_suara("db", "restore", str(backup), "--pgdata", str(tmp_path / "d"), env=env, cwd=tmp_path)
        assert damaged.returncode == 1 and "damaged" in damaged.stderr, damaged.stderr
        assert not (tmp_path / "d").exists()
    finally:
        server.stop("immediate")
        restored.stop("immediate")


def _distribution_bin() -> Path:
    """Another PostgreSQL than the embedded one, as a server behind DATABASE_URL may be: the distribution's."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        pytest.skip("no distribution PostgreSQL here (apt-get install postgresql)")
    return found[-1].parent


async def test_a_database_url_server_of_another_version_is_backed_up_and_restored_as_a_bare_pgdata(
    tmp_path: Path,
) -> None:
    bin_dir = _distribution_bin()
    server = EmbeddedPostgres(tmp_path / "source" / "pgdata", bin_dir=bin_dir)
    restored = EmbeddedPostgres(tmp_path / "target" / "pgdata", bin_dir=bin_dir)
    backup = tmp_path / "backup"
    try:
        server.start()
        url = server.url(role=OWNER_ROLE)
        rows = await _fill(url)
        env = suara_env(DATABASE_URL=url)
        made = await run_suara("db", "backup", str(backup), env=env, cwd=tmp_path)
        assert made.returncode == 0, made.stderr
        version = (bin_dir / "..").resolve().name
        assert (await run_suara("db", "url", env=env, cwd=tmp_path)).stdout.strip() == url
        server.stop()

        into_embedded = await run_suara("db", "restore", str(backup), "--data-dir", str(tmp_path / "e"), env=env,
                                        cwd=tmp_path)  # fmt: skip
        if version != "18":
            assert into_embedded.returncode == 1, into_embedded.stdout
            assert f"comes from PostgreSQL {version}" in into_embedded.stderr and "--pgdata" in into_embedded.stderr
            assert "WAL is not parsed" in made.stderr

        back = await run_suara("db", "restore", str(backup), "--pgdata", str(restored.pgdata), env=env, cwd=tmp_path)
        assert back.returncode == 0, back.stderr
        # Started with that version's own programs, as the operator would.
        restored.adopt_restored()
        restored.start()
        assert await _rows(restored.url(role=OWNER_ROLE)) == rows
    finally:
        server.stop("immediate")
        restored.stop("immediate")


async def archived_up_to_now(superuser_url: str) -> None:
    """Until `suara db archive` has flushed every record written so far (PostgreSQL's own view of it)."""
    conn = await asyncpg.connect(superuser_url)
    try:
        lsn = await conn.fetchval("SELECT pg_current_wal_lsn()")

        async def flushed() -> bool:
            return bool(
                await conn.fetchval(
                    "SELECT coalesce(bool_or(flush_lsn >= $1), false) FROM pg_stat_replication "
                    "WHERE application_name = 'pg_receivewal'",
                    lsn,
                )
            )

        await poll_until(flushed, "the archive has the WAL", 30)
    finally:
        await conn.close()


async def test_a_wal_archive_gives_back_what_came_after_the_backup_to_its_end_or_to_a_time(tmp_path: Path) -> None:
    source, backup, wal = tmp_path / "source", tmp_path / "backup", tmp_path / "wal"
    server = EmbeddedPostgres(source / "pgdata")
    latest, earlier = EmbeddedPostgres(tmp_path / "latest" / "pgdata"), EmbeddedPostgres(tmp_path / "pit" / "pgdata")
    env = suara_env(SUARA_DATA_DIR=source)
    try:
        refused = await run_suara("db", "archive", str(wal), env=env, cwd=tmp_path)
        assert refused.returncode == 1 and "not running" in refused.stderr and "suara db start" in refused.stderr

        server.start()
        url = server.url(role=OWNER_ROLE)
        await _fill(url)
        assert (await run_suara("db", "backup", str(backup), env=env, cwd=tmp_path)).returncode == 0
        async with running("db", "archive", str(wal), env=env, cwd=tmp_path) as archiver:
            conn = await asyncpg.connect(url)
            try:
                # After the backup: one batch before the point in time, one after it.
                await conn.execute(ADD, ROWS + 1, ROWS + 100, "before")
                point = await conn.fetchval("SELECT clock_timestamp()")  # after that commit, before the next
                await conn.execute(ADD, ROWS + 101, ROWS + 200, "after")
                everything = [tuple(r) for r in await conn.fetch("SELECT n, v FROM public.drill ORDER BY n")]
            finally:
                await conn.close()
            await archived_up_to_now(server.url())
            archiver.assert_alive()
            await archiver.terminate(10)
        server.stop("immediate")  # the machine is lost: only the backup and the archive are left

        other = suara_env(SUARA_DATA_DIR=tmp_path / "unused")
        to_end = await run_suara("db", "restore", str(backup), "--data-dir", str(latest.pgdata.parent),
                                 "--wal-archive", str(wal), env=other, cwd=tmp_path)  # fmt: skip
        assert to_end.returncode == 0, to_end.stderr
        latest.start()
        assert await _rows(latest.url(role=OWNER_ROLE)) == everything

        to_point = await run_suara("db", "restore", str(backup), "--data-dir", str(earlier.pgdata.parent),
                                   "--wal-archive", str(wal), "--target-time", point.isoformat(), env=other,
                                   cwd=tmp_path)  # fmt: skip
        assert to_point.returncode == 0, to_point.stderr
        assert "recovery_target" not in (earlier.pgdata / "postgresql.auto.conf").read_text(), "left for a later start"
        earlier.start()
        assert await _rows(earlier.url(role=OWNER_ROLE)) == [r for r in everything if r[1] != "after"]

        alone = await run_suara("db", "restore", str(backup), "--pgdata", str(tmp_path / "x"),
                                "--target-time", point.isoformat(), env=other, cwd=tmp_path)  # fmt: skip
        assert alone.returncode == 1 and "--target-time needs --wal-archive" in alone.stderr
    finally:
        for s in (server, latest, earlier):
            s.stop("immediate")


async def test_an_archive_that_does_not_continue_the_backup_is_refused_rather_than_replayed_in_part(
    tmp_path: Path,
) -> None:
    source, backup, wal = tmp_path / "source", tmp_path / "backup", tmp_path / "wal"
    server = EmbeddedPostgres(source / "pgdata")
    env = suara_env(SUARA_DATA_DIR=source)
    try:
        server.start()
        url = server.url(role=OWNER_ROLE)
        await _fill(url)
        assert (await run_suara("db", "backup", str(backup), env=env, cwd=tmp_path)).returncode == 0
        conn = await asyncpg.connect(server.url())
        try:
            for n in range(2):  # WAL the archive will never see: written and switched away before it starts
                await conn.execute(ADD, ROWS + 1 + n, ROWS + 1 + n, "unarchived")
                await conn.execute("SELECT pg_switch_wal()")
        finally:
            await conn.close()
        async with running("db", "archive", str(wal), env=env, cwd=tmp_path) as archiver:
            await _fill_more(url)
            await archived_up_to_now(server.url())
            await archiver.terminate(10)
        other = suara_env(SUARA_DATA_DIR=tmp_path / "unused")
        refused = await run_suara("db", "restore", str(backup), "--pgdata", str(tmp_path / "r"), "--wal-archive",
                                  str(wal), env=other, cwd=tmp_path)  # fmt: skip
        assert refused.returncode == 1, refused.stdout
        assert "starts after this backup ended" in refused.stderr, refused.stderr
    finally:
        server.stop("immediate")


async def _fill_more(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(ADD, 2 * ROWS, 2 * ROWS + 10, "archived")
    finally:
        await conn.close()
