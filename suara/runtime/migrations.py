"""Schema migrations: ordered .sql files per component, each component in its own schema.

`migrate` is safe to run twice (applied files are skipped) and by two
processes at once (a transaction-scoped advisory lock serializes them, and the
second sees what the first applied). An applied file that was edited
afterwards is an error: migrations are append-only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import asyncpg

_LOCK_KEY = 0x5355415241  # "SUARA"

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS public.suara_migration (
    component text NOT NULL,
    name text NOT NULL,
    sha256 text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (component, name)
)
"""


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    component: str
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(components: list[tuple[str, Path]]) -> list[Migration]:
    """Every migration, component by component in the order given, files by name."""
    found = []
    for component, directory in components:
        for path in sorted(directory.glob("*.sql")):
            found.append(Migration(component, path.name, path.read_text()))
    return found


async def migrate(conn: asyncpg.Connection, migrations: list[Migration]) -> list[Migration]:
    """Apply what is not applied yet, in one transaction; return what was applied."""
    applied_now: list[Migration] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(_BOOKKEEPING)
        rows = await conn.fetch("SELECT component, name, sha256 FROM public.suara_migration")
        done = {(r["component"], r["name"]): r["sha256"] for r in rows}
        for m in migrations:
            previous = done.get((m.component, m.name))
            if previous is not None:
                if previous != m.sha256:
                    raise MigrationError(
                        f"{m.component}/{m.name} was changed after it was applied; "
                        "add a new migration instead of editing an applied one"
                    )
                continue
            await conn.execute(m.sql)
            await conn.execute(
                "INSERT INTO public.suara_migration (component, name, sha256) VALUES ($1, $2, $3)",
                m.component,
                m.name,
                m.sha256,
            )
            applied_now.append(m)
    return applied_now


async def unmigrate(conn: asyncpg.Connection, components: list[str]) -> None:
    """Undo every migration: drop the components' schemas, with every row in them, and the bookkeeping, in
    one transaction (all of it goes, or nothing). For a rehearsal's database only (`suara rehearsal wipe`);
    the database is then as before `suara db migrate`. The server's roles stay: they are the whole server's.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        # A service still connected holds locks: fail in seconds, saying so, rather than wait behind it.
        await conn.execute("SET LOCAL lock_timeout = '10s'")
        schemas = ", ".join(f'"{c}"' for c in components)
        await conn.execute(f"DROP SCHEMA IF EXISTS {schemas} CASCADE")
        await conn.execute("DROP TABLE IF EXISTS public.suara_migration")
