"""Who may call tally's admin methods: holders of an admin credential (a bearer token; only its SHA-256
is stored, in tally.admin_credential). The reads of stored submissions are admin methods too: they
return signed documents and device ids in bulk, nothing an anonymous caller needs. Every other method
is open: a device proves itself by the signature on its form; the chain head and photos are public
(publish reads them, and the site publishes both)."""

from __future__ import annotations

import hashlib
import time

import asyncpg

from services.tally.queries import QUERIES
from suara.client import service_names
from suara.runtime.auth.admin import BEARER, AdminCredential
from suara.runtime.auth.interceptor import AuthInterceptor
from suara.runtime.auth.principal import Call, Principal
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


async def create_admin_credential(conn: asyncpg.Connection, label: str = "") -> AdminCredential:
    credential = AdminCredential.generate()
    await conn.execute(QUERIES.insert_admin_credential, credential.id, token_hash(credential.token), label)
    return credential


class AdminTokens:
    """Proves an admin by the bearer token of an admin credential. A valid token is remembered for a
    minute, to keep the database out of the way of a provisioning run."""

    name = "admin credential"
    TTL_S = 60.0

    def __init__(self, db: Database) -> None:
        self._db = db
        self._valid: dict[bytes, tuple[float, str]] = {}  # token hash -> (valid until, credential id)

    async def authenticate(self, call: Call) -> Principal:
        header = str(call.metadata.get("authorization", ""))
        if not header.startswith(BEARER + " "):
            raise Unauthenticated("this call needs an admin credential: metadata `authorization: Bearer <token>`")
        digest = token_hash(header.removeprefix(BEARER + " ").strip())
        now = time.monotonic()
        until, credential_id = self._valid.get(digest, (0.0, ""))
        if until <= now:
            credential_id = await self._db.fetchval(QUERIES.admin_by_token, digest)
            if credential_id is None:
                raise PermissionDenied("the admin credential is not valid (unknown or revoked); see `suara admin init`")
            self._valid[digest] = (now + self.TTL_S, credential_id)
        return Principal(credential_id, ADMIN)


def access_interceptor(db: Database) -> AuthInterceptor:
    return AuthInterceptor(AdminTokens(db), admin_rules(), open_methods=open_methods())
