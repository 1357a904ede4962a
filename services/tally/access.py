"""Who may call tally's admin methods: holders of an admin certificate (role admin, on the internal
mutual-TLS listener), or, in plaintext debugging mode only, of an admin bearer token (only its SHA-256
is stored, in tally.admin_credential; a token on a plaintext wire can be captured and replayed). The
reads of stored submissions are admin methods too: they return signed documents and device ids in
bulk, nothing an anonymous caller needs. Every other method is open: a device proves itself by the
signature on its form; the chain head and photos are public (publish reads them, and the site
publishes both)."""

from __future__ import annotations

import hashlib
import time

import asyncpg

from services.tally.credentials import record_admin_action
from services.tally.queries import QUERIES
from suara.client import service_names
from suara.runtime.auth.admin import BEARER, AdminCredential
from suara.runtime.auth.certificate import PeerCertificates
from suara.runtime.auth.interceptor import AuthInterceptor
from suara.runtime.auth.principal import Authenticator, Call, Principal
from suara.runtime.database import Database
from suara.runtime.errors import PermissionDenied, Unauthenticated

ADMIN = "admin"
ADMIN_METHODS = frozenset({"EnrollDevice", "EnrollDevices", "GetSubmission", "ListSubmissions"})
_SERVICE = service_names.TALLY


def _full(name: str) -> str:
    return service_names.method_path(_SERVICE, name)


def admin_rules() -> dict[str, str]:
    return {_full(name): ADMIN for name in ADMIN_METHODS}


def open_methods() -> frozenset[str]:
    return frozenset(_full(m.name) for m in _SERVICE.methods if m.name not in ADMIN_METHODS)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def create_admin_credential(
    conn: asyncpg.Connection, label: str = "", *, actor: str | None = None
) -> AdminCredential:
    """A new admin credential; with an `actor`, recorded in tally.admin_log in the same transaction."""
    credential = AdminCredential.generate()
    async with conn.transaction():
        await conn.execute(QUERIES.insert_admin_credential, credential.id, token_hash(credential.token), label)
        if actor is not None:
            await record_admin_action(conn, actor, "admin.issue", credential.id, {"label": label})
    return credential


async def revoke_admin_credential(conn: asyncpg.Connection, credential_id: str, actor: str, reason: str = "") -> bool:
    """Revoke it and record who did; False when no live credential has that id. Every running tally
    refuses it within a second (the revocation's notification)."""
    async with conn.transaction():
        if await conn.fetchval(QUERIES.revoke_admin_credential, credential_id) is None:
            return False
        await record_admin_action(conn, actor, "admin.revoke", credential_id, {"reason": reason})
    return True


class AdminTokens:
    """Proves an admin by the bearer token of an admin credential. A valid token is remembered for a
    few seconds, to keep the database out of the way of a provisioning run; a revocation drops it at
    once (`forget`, on its notification)."""

    name = "admin credential"
    TTL_S = 10.0

    def __init__(self, db: Database) -> None:
        self._db = db
        self._valid: dict[bytes, tuple[float, str]] = {}  # token hash -> (valid until, credential id)
        self._forgotten = 0  # counts forget/clear: a lookup that raced one is not remembered

    def forget(self, credential_id: str) -> None:
        self._valid = {k: v for k, v in self._valid.items() if v[1] != credential_id}
        self._forgotten += 1

    def clear(self) -> None:
        self._valid.clear()
        self._forgotten += 1

    async def authenticate(self, call: Call) -> Principal:
        header = str(call.metadata.get("authorization", ""))
        if not header.startswith(BEARER + " "):
            raise Unauthenticated("this call needs an admin credential: metadata `authorization: Bearer <token>`")
        digest = token_hash(header.removeprefix(BEARER + " ").strip())
        now = time.monotonic()
        until, credential_id = self._valid.get(digest, (0.0, ""))
        if until <= now:
            forgotten = self._forgotten
            credential_id = await self._db.fetchval(QUERIES.admin_by_token, digest)
            if credential_id is None:
                raise PermissionDenied("the admin credential is not valid (unknown or revoked); see `suara admin init`")
            if forgotten == self._forgotten:  # no revocation came while the database answered
                self._valid[digest] = (now + self.TTL_S, credential_id)
        return Principal(credential_id, ADMIN)


def access_interceptor(
    db: Database, admins: AdminTokens | None = None, certificates: PeerCertificates | None = None
) -> AuthInterceptor:
    """Callers proven by their `certificates` (TLS), or by admin tokens when None (plaintext debugging)."""
    authenticator: Authenticator = certificates or admins or AdminTokens(db)
    return AuthInterceptor(authenticator, admin_rules(), open_methods=open_methods())
