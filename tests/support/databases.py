"""Test databases: one PostgreSQL per test worker, one database per test.

The server is DATABASE_URL's when it is set (CI also runs the suite against the
machine's PostgreSQL that way), otherwise an embedded one started for this
worker. Each worker migrates and loads a small registry into a template
database once; every test gets a fresh copy of it, so tests run in parallel
without seeing each other's rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from cli.db import migrate_url
from cli.embedded import EmbeddedPostgres

# The registry every test database starts with: the real area hierarchy, the
# configured contests, and a small reproducible synthetic TPS list.
TEST_SCALE = 0.002
TEST_SEED = 7


# The services' roles in tests: a login role that is a member of each service's group role (as a
# deployment's would be). Roles are the whole server's, so these are shared by every worker and every
# test database, with one fixed password (a test server only).
TEST_ROLE_PASSWORD = "suara-test-only"


def login_role(service: str) -> str:
    return f"suara_test_{service}"


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def as_service(url: str, service: str) -> str:
    """`url` (a test database's) logging in as the test role of `service` (tally, aggregate, publish)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{login_role(service)}:{TEST_ROLE_PASSWORD}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def _create_test_roles(server_url: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        for service in ("tally", "aggregate", "publish"):
            role = login_role(service)
            # Another worker may make it meanwhile (or an earlier run on this server made it already).
            with contextlib.suppress(asyncpg.DuplicateObjectError, asyncpg.UniqueViolationError):
                await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{TEST_ROLE_PASSWORD}' IN ROLE suara_{service}")
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def worker_id_safe(request: pytest.FixtureRequest) -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"{worker}_{os.getpid()}"


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a PostgreSQL server (its maintenance database) for this worker."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "pgdata")
    url = server.start()
    yield url
    server.stop("immediate")


async def _prepare_template(server_url: str, name: str) -> None:
    from suara.registry.loader import load_registry
    from tests.support.factories import TEST_ELECTION

    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = with_database(server_url, name)
    await migrate_url(url)  # creates the services' group roles, if this server has none yet
    await _create_test_roles(server_url)
    conn = await asyncpg.connect(url)
    try:
        await load_registry(conn, synthetic_scale=TEST_SCALE, seed=TEST_SEED, election_id=TEST_ELECTION)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_db(pg_server: str, worker_id_safe: str) -> Iterator[str]:
    name = f"suara_tpl_{worker_id_safe}"
    asyncio.run(_prepare_template(pg_server, name))
    yield name

    async def drop() -> None:
        admin = await asyncpg.connect(pg_server)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(drop())


@contextlib.asynccontextmanager
async def fresh_database(pg_server: str, template_db: str) -> AsyncIterator[str]:
    """A new database copied from the worker's template, dropped afterwards."""
    name = f"suara_t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    finally:
        await admin.close()
    try:
        yield with_database(pg_server, name)
    finally:
        admin = await asyncpg.connect(pg_server)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def db_url(pg_server: str, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database with the test registry, dropped after the test."""
    async with fresh_database(pg_server, template_db) as url:
        yield url


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db_url)
    yield conn
    await conn.close()


@pytest.fixture
async def empty_db(pg_server: str) -> AsyncIterator[str]:
    """A new database with nothing in it (not even migrations), dropped after the test."""
    name = f"suara_m_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(pg_server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    yield with_database(pg_server, name)
    admin = await asyncpg.connect(pg_server)
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()
