"""`suara db …`: without DATABASE_URL, suara runs its own PostgreSQL in SUARA_DATA_DIR, as a newcomer meets it;
`db migrate` against a given database is idempotent."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from cli.components import MIGRATION_DIRS
from cli.embedded import OWNER_ROLE, SERVICE_ROLES, SUPERUSER, EmbeddedPostgres
from suara.runtime.database import Database
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


async def test_the_embedded_server_trusts_no_connection_and_keeps_each_password_to_itself(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pgdata")
    server.start()
    try:
        for role in (SUPERUSER, OWNER_ROLE, *SERVICE_ROLES.values()):
            assert oct(server.passfile(role).stat().st_mode & 0o777) == "0o600"
            conn = await asyncpg.connect(server.url(role=role))  # its password file proves it
            try:
                assert await conn.fetchval("SELECT current_user") == role
                # The password is kept as a SCRAM-SHA-256 verifier (pg_authid: the superuser alone reads it).
            finally:
                await conn.close()
        superuser = await asyncpg.connect(server.url())
        try:
            stored = await superuser.fetch("SELECT rolname, rolpassword FROM pg_authid WHERE rolcanlogin")
            assert {r["rolname"] for r in stored} == {SUPERUSER, OWNER_ROLE, *SERVICE_ROLES.values()}
            assert all(r["rolpassword"].startswith("SCRAM-SHA-256$") for r in stored), stored
            hba = await superuser.fetch("SELECT type, auth_method FROM pg_hba_file_rules")
            assert {r["auth_method"] for r in hba} == {"scram-sha-256"}, hba  # no trust, no md5
        finally:
            await superuser.close()
        tcp = f"postgresql://{SUPERUSER}@127.0.0.1:{server.port}/postgres"
        socket = f"postgresql://{SUPERUSER}@/postgres?host={server.pgdata}&port={server.port}"
        for url in (tcp, socket, tcp.replace("@", ":guess@")):  # neither loopback nor the socket is trusted
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(url)
    finally:
        server.stop("immediate")


def _distribution_postgres() -> Path:
    """A PostgreSQL built with TLS (the package's is not), as a remote server would be: the distribution's."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        pytest.skip("no distribution PostgreSQL here (apt-get install postgresql): the embedded build has no TLS")
    return found[-1].parent


async def test_verify_full_reaches_a_tls_server_signed_by_the_given_ca_and_refuses_any_other(tmp_path: Path) -> None:
    import ssl

    from suara.runtime import pki

    ca, stranger = pki.create_ca("deployment CA"), pki.create_ca("another CA")
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    (tmp_path / "other.crt").write_bytes(stranger.cert_pem)
    server_pair = pki.issue_server(ca, "postgres", ["localhost"])  # the name clients use, and no other
    server = EmbeddedPostgres(tmp_path / "pgdata", bin_dir=_distribution_postgres())
    server.start()
    try:
        server.use_tls(server_pair.cert_pem, server_pair.key_pem)

        def url(host: str, ca_file: str) -> str:
            return (
                f"postgresql://{SUPERUSER}@{host}:{server.port}/postgres?passfile={server.passfile(SUPERUSER)}"
                f"&sslmode=verify-full&sslrootcert={tmp_path / ca_file}"
            )

        pool = await Database.open(url("localhost", "ca.crt"), size=1)  # as a service's pool connects
        try:
            assert await pool.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is True
        finally:
            await pool.close()
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
            await asyncpg.connect(url("localhost", "other.crt"))  # a server the given CA did not sign
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
            await asyncpg.connect(url("127.0.0.1", "ca.crt"))  # signed, but not for the host named
    finally:
        server.stop("immediate")
