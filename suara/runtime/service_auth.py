"""Service-to-service credentials: who may call a protected service (aggregate), and as what.

A credential is an id, a role and an Ed25519 key pair. The caller keeps the
private key in a file; the protected service keeps id → (role, public key,
revoked) in a table of its own schema. Every call carries

    authorization: Suara-Service <credential id>:<unix seconds>:<hex signature>

where the signature covers "<full method>\\n<unix seconds>", so a token is good
for one method and ±60 s only: a captured one cannot be turned into another
call, and replays are bounded by the window (TLS is the deployment's answer to
replay within it). No shared secret is stored server side: a dump of the table
grants nothing.

Roles are disjoint on purpose (least privilege): a writer (tally's relay, a
federated aggregate) may only Apply*, a reader (publish) only read. A leaked
relay key cannot scrape, a leaked publish key cannot change totals. A process
that needs both holds two credentials.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import asyncpg
import grpc
import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from suara.runtime.database import CONNECTION_ERRORS
from suara.runtime.secrets_file import write_secret

log = structlog.stdlib.get_logger("suara.service_auth")

Role = Literal["writer", "reader"]
ROLES: Final[tuple[Role, ...]] = ("writer", "reader")
SCHEME: Final = "Suara-Service"
MAX_SKEW_S: Final = 60
DEFAULT_TABLE: Final = "aggregate.service_credential"
CREDENTIAL_KIND: Final = "suara-service-credential"

# Always reachable: load balancers probe health without credentials, and reflection only describes the API.
OPEN_PREFIXES: Final = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

_TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$")
_ID = re.compile(r"^svc_[0-9a-f]{12}$")


def _checked_table(table: str) -> str:
    # The table name is interpolated into SQL (identifiers cannot be parameters), so only plain schema.name passes.
    if not _TABLE_NAME.match(table):
        raise ValueError(f"table must be a plain lower-case schema.name, got {table!r}")
    return table


def credential_table_ddl(table: str = DEFAULT_TABLE) -> str:
    """The table the protected service keeps its callers in; include it in that service's migration."""
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


def signed_message(method: str, unix_s: int) -> bytes:
    return f"{method}\n{unix_s}".encode()


# --- the caller's side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceCredential:
    """What a calling service keeps: its credential id, role, name and private key."""

    id: str
    name: str
    role: Role
    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls, name: str, role: Role) -> ServiceCredential:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        return cls("svc_" + secrets.token_hex(6), name, role, Ed25519PrivateKey.generate())

    @property
    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def token(self, method: str, unix_s: int | None = None) -> str:
        now = int(time.time()) if unix_s is None else unix_s
        signature = self.private_key.sign(signed_message(method, now)).hex()
        return f"{SCHEME} {self.id}:{now}:{signature}"

    def metadata(self, method: str, unix_s: int | None = None) -> tuple[tuple[str, str], ...]:
        """The call metadata for one call of `method` (the full name, "/suara.v1.AggregateService/ApplyUpdates")."""
        return (("authorization", self.token(method, unix_s)),)

    def to_json(self) -> str:
        raw = self.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        data = {
            "kind": CREDENTIAL_KIND,
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "ed25519_private": raw.hex(),
        }
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> ServiceCredential:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("kind") != CREDENTIAL_KIND:
            raise ValueError("not a suara service credential")
        if data.get("role") not in ROLES:
            raise ValueError(f"unknown role {data.get('role')!r}")
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(data["ed25519_private"]))
        return cls(str(data["id"]), str(data["name"]), data["role"], key)

    @classmethod
    def load(cls, path: Path) -> ServiceCredential:
        try:
            return cls.from_json(path.read_text())
        except (ValueError, KeyError) as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def save(self, path: Path) -> None:
        write_secret(path, self.to_json() + "\n")


class ServiceAuthClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Signs every unary call made through a channel: `grpc.aio.insecure_channel(addr, interceptors=[...])`."""

    def __init__(self, credential: ServiceCredential) -> None:
        self.credential = credential

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = client_call_details.method
        name = method.decode() if isinstance(method, bytes) else str(method)
        metadata = grpc.aio.Metadata(*(client_call_details.metadata or ()))
        for key, value in self.credential.metadata(name):
            metadata.add(key, value)
        details = grpc.aio.ClientCallDetails(
            client_call_details.method,
            client_call_details.timeout,
            metadata,
            client_call_details.credentials,
            client_call_details.wait_for_ready,
        )
        return await continuation(details, request)


# --- the protected side --------------------------------------------------------------------------


class CredentialStore(Protocol):
    async def lookup(self, credential_id: str) -> tuple[str, bytes] | None:
        """(role, raw Ed25519 public key) of a live credential; None if unknown or revoked."""
        ...


class PgCredentialStore:
    """The credential table in the protected service's schema (see `credential_table_ddl`)."""

    def __init__(self, pool: asyncpg.Pool | asyncpg.Connection, table: str = DEFAULT_TABLE) -> None:
        self._pool = pool
        self._query = f"SELECT role, public_key FROM {_checked_table(table)} WHERE id = $1 AND revoked_at IS NULL"

    async def lookup(self, credential_id: str) -> tuple[str, bytes] | None:
        row = await self._pool.fetchrow(self._query, credential_id)
        return None if row is None else (str(row["role"]), bytes(row["public_key"]))


async def register_service_credential(
    conn: asyncpg.Connection | asyncpg.Pool, credential: ServiceCredential, table: str = DEFAULT_TABLE
) -> None:
    await conn.execute(
        f"INSERT INTO {_checked_table(table)} (id, name, role, public_key) VALUES ($1, $2, $3, $4)",
        credential.id,
        credential.name,
        credential.role,
        credential.public_key,
    )


async def issue_service_credential(
    conn: asyncpg.Connection | asyncpg.Pool, name: str, role: Role, table: str = DEFAULT_TABLE
) -> ServiceCredential:
    credential = ServiceCredential.generate(name, role)
    await register_service_credential(conn, credential, table)
    return credential


async def revoke_service_credential(
    conn: asyncpg.Connection | asyncpg.Pool, credential_id: str, table: str = DEFAULT_TABLE
) -> bool:
    """Revoke; True if a live credential was revoked. Servers stop accepting it within their cache TTL."""
    status = await conn.execute(
        f"UPDATE {_checked_table(table)} SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
        credential_id,
    )
    return bool(status == "UPDATE 1")


class AuthError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _unauthenticated(message: str) -> AuthError:
    return AuthError(grpc.StatusCode.UNAUTHENTICATED, message)


class ServiceAuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks the Suara-Service token on every call, then the caller's role against `rules`.

    `rules` maps a full method name to the role it needs; a method not in it is
    denied to everyone (a new RPC is closed until someone decides who may call
    it). Health and reflection are always open. A verified credential's (role,
    key) is cached for `cache_ttl_s`, which is also how long a revocation takes
    to bite; unknown ids are never cached, so a new credential works at once.
    """

    def __init__(
        self,
        store: CredentialStore,
        rules: Mapping[str, Role],
        *,
        cache_ttl_s: float = 30.0,
        max_skew_s: int = MAX_SKEW_S,
        clock: Callable[[], float] = time.time,
        self_authenticated: frozenset[str] = frozenset(),
    ) -> None:
        self._store = store
        self._rules = dict(rules)
        # Methods whose request carries its own signature, checked by the handler (an official's recap):
        # no service credential is asked for them.
        self._self_authenticated = self_authenticated
        self._ttl = cache_ttl_s
        self._skew = max_skew_s
        self._clock = clock
        self._cache: dict[str, tuple[float, str, Ed25519PublicKey]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        if method.startswith(OPEN_PREFIXES) or method in self._self_authenticated:
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:  # no such method: let gRPC answer UNIMPLEMENTED
            return None
        metadata = dict(handler_call_details.invocation_metadata or ())
        try:
            credential_id, role = await self.authenticate(method, metadata.get("authorization"))
            self.authorize(method, credential_id, role)
        except AuthError as error:
            log.info("service_auth_refused", method=method, code=error.code.name, error=error.message)
            return _refusal(handler, error)
        return handler

    async def authenticate(self, method: str, header: str | bytes | None) -> tuple[str, str]:
        """(credential id, role) of a valid token for `method`, else AuthError(UNAUTHENTICATED)."""
        if not isinstance(header, str) or not header.startswith(SCHEME + " "):
            raise _unauthenticated(
                f"this call needs a service credential: metadata `authorization: {SCHEME} "
                "<credential id>:<unix seconds>:<hex Ed25519 signature>` (see `suara service issue`)"
            )
        parts = header[len(SCHEME) + 1 :].strip().split(":")
        if len(parts) != 3 or not _ID.match(parts[0]) or not parts[1].isdigit():
            raise _unauthenticated(f"malformed {SCHEME} token; expected <credential id>:<unix seconds>:<hex signature>")
        credential_id, stamp, signature_hex = parts
        try:
            signature = bytes.fromhex(signature_hex)
        except ValueError:
            raise _unauthenticated("the token's signature is not hex") from None
        unix_s = int(stamp)
        now = self._clock()
        if abs(now - unix_s) > self._skew:
            raise _unauthenticated(
                f"the token is {int(now - unix_s)} s from the server's clock (allowed ±{self._skew} s); "
                "check the caller's clock"
            )
        role, key = await self._credential(credential_id)
        try:
            key.verify(signature, signed_message(method, unix_s))
        except InvalidSignature:
            raise _unauthenticated(f"bad signature for {method} from credential {credential_id}") from None
        return credential_id, role

    def authorize(self, method: str, credential_id: str, role: str) -> None:
        needed = self._rules.get(method)
        if needed is None:
            raise AuthError(grpc.StatusCode.PERMISSION_DENIED, f"{method} is not open to any service credential")
        if role != needed:
            raise AuthError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"credential {credential_id} is a {role}; {method} needs a {needed} credential",
            )

    async def _credential(self, credential_id: str) -> tuple[str, Ed25519PublicKey]:
        now = time.monotonic()
        cached = self._cache.get(credential_id)
        if cached is not None and cached[0] > now:
            return cached[1], cached[2]
        try:
            found = await self._store.lookup(credential_id)
        except CONNECTION_ERRORS as exc:
            raise AuthError(grpc.StatusCode.UNAVAILABLE, "cannot check the service credential right now") from exc
        if found is None:
            self._cache.pop(credential_id, None)
            raise _unauthenticated(f"unknown or revoked service credential {credential_id}")
        role, raw = found
        key = Ed25519PublicKey.from_public_bytes(raw)
        if len(self._cache) > 10_000:  # a handful of services call; bound it anyway
            self._cache.clear()
        self._cache[credential_id] = (now + self._ttl, role, key)
        return role, key


def _refusal(handler: grpc.RpcMethodHandler[Any, Any], error: AuthError) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as `handler` that only aborts with `error`."""

    async def abort(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(error.code, error.message)

    kwargs: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(abort, **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(abort, **kwargs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(abort, **kwargs)
    return grpc.stream_stream_rpc_method_handler(abort, **kwargs)


def aggregate_rules() -> dict[str, Role]:
    """Who may call suara.v1.AggregateService: writers apply, readers read."""
    from suara.v1 import aggregate_pb2

    service = aggregate_pb2.DESCRIPTOR.services_by_name["AggregateService"]
    writes = {"ApplyUpdates", "ApplyAreaUpdates"}
    return {
        f"/{service.full_name}/{m.name}": ("writer" if m.name in writes else "reader")
        for m in service.methods
        if m.name not in _OFFICIAL_METHODS
    }


_OFFICIAL_METHODS = frozenset({"SubmitRecap"})


def aggregate_self_authenticated() -> frozenset[str]:
    """Aggregate methods an official calls with a signed payload instead of a service credential."""
    from suara.v1 import aggregate_pb2

    service = aggregate_pb2.DESCRIPTOR.services_by_name["AggregateService"]
    return frozenset(f"/{service.full_name}/{name}" for name in _OFFICIAL_METHODS)
