"""The protected service's side of service credentials: its table (DDL), issue, revoke and lookup.

The table lives in the protected service's own schema; include `credential_table_ddl()` in that
service's migration. No secret is stored: only each credential's public key and role.
"""

from __future__ import annotations

import re
from typing import Final, Protocol

import asyncpg

from suara.runtime.auth.credential import Role, ServiceCredential
from suara.runtime.database import Database

DEFAULT_TABLE: Final = "aggregate.service_credential"  # the one service that asks for service credentials

_TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$")


def _checked_table(table: str) -> str:
    # The table name is interpolated into SQL (identifiers cannot be parameters), so only plain schema.name passes.
    if not _TABLE_NAME.match(table):
        raise ValueError(f"table must be a plain lower-case schema.name, got {table!r}")
    return table


def credential_table_ddl(table: str = DEFAULT_TABLE) -> str:
    """The table the protected service keeps its callers in."""
    table = _checked_table(table)
    return f"""CREATE TABLE {table} (
    id text PRIMARY KEY CHECK (id ~ '^svc_[0-9a-f]{{12}}$'),
    name text NOT NULL,
    role text NOT NULL CHECK (role IN ('writer', 'reader')),
    public_key bytea NOT NULL UNIQUE CHECK (length(public_key) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
"""


class CredentialStore(Protocol):
    async def lookup(self, credential_id: str) -> tuple[str, bytes] | None:
        """(role, raw Ed25519 public key) of a live credential; None if unknown or revoked."""
        ...


class PgCredentialStore:
    """The credential table in the protected service's schema (see `credential_table_ddl`)."""

    def __init__(self, db: Database, table: str = DEFAULT_TABLE) -> None:
        self._db = db
        self._query = f"SELECT role, public_key FROM {_checked_table(table)} WHERE id = $1 AND revoked_at IS NULL"

    async def lookup(self, credential_id: str) -> tuple[str, bytes] | None:
        row = await self._db.fetchrow(self._query, credential_id)
        return None if row is None else (str(row["role"]), bytes(row["public_key"]))


async def register_service_credential(
    conn: asyncpg.Connection | Database, credential: ServiceCredential, table: str = DEFAULT_TABLE
) -> None:
    await conn.execute(
        f"INSERT INTO {_checked_table(table)} (id, name, role, public_key) VALUES ($1, $2, $3, $4)",
        credential.id,
        credential.name,
        credential.role,
        credential.public_key,
    )


async def issue_service_credential(
    conn: asyncpg.Connection | Database, name: str, role: Role, table: str = DEFAULT_TABLE
) -> ServiceCredential:
    credential = ServiceCredential.generate(name, role)
    await register_service_credential(conn, credential, table)
    return credential


async def revoke_service_credential(
    conn: asyncpg.Connection | Database, credential_id: str, table: str = DEFAULT_TABLE
) -> bool:
    """Revoke; True if a live credential was revoked. Servers stop accepting it within their cache TTL."""
    status = await conn.execute(
        f"UPDATE {_checked_table(table)} SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
        credential_id,
    )
    return bool(status == "UPDATE 1")
