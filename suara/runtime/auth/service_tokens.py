"""One proof of who is calling: a Suara-Service token (see suara.runtime.auth.credential) checked
against the protected service's credential store."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from suara.runtime.auth.credential import MAX_SKEW_S, SCHEME, signed_message
from suara.runtime.auth.principal import Call, Principal
from suara.runtime.auth.store import CredentialStore
from suara.runtime.database import DatabaseUnavailable
from suara.runtime.errors import Unauthenticated, Unavailable

_ID = re.compile(r"^svc_[0-9a-f]{12}$")


class ServiceTokens:
    """Authenticates a call by its signed token: the credential id's key must have signed this method
    within ±`max_skew_s` of the server's clock.

    A verified credential's (role, key) is cached for `cache_ttl_s`; a revocation drops it at once
    when the service follows its notifications (`forget`), and the expiry bounds how long a missed
    one keeps it alive. Unknown ids are never cached, so a new credential works at once.
    """

    name = "service credential"

    def __init__(
        self,
        store: CredentialStore,
        *,
        cache_ttl_s: float = 10.0,
        max_skew_s: int = MAX_SKEW_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._ttl = cache_ttl_s
        self._skew = max_skew_s
        self._clock = clock
        self._cache: dict[str, tuple[float, str, Ed25519PublicKey]] = {}
        self._forgotten = 0  # counts forget/clear: a lookup that raced one is answered, not remembered

    def forget(self, credential_id: str) -> None:
        """Drop a revoked credential now (its notification), rather than when its cache entry expires."""
        self._cache.pop(credential_id, None)
        self._forgotten += 1

    def clear(self) -> None:
        self._cache.clear()
        self._forgotten += 1

    async def authenticate(self, call: Call) -> Principal:
        header = call.metadata.get("authorization")
        if not isinstance(header, str) or not header.startswith(SCHEME + " "):
            raise Unauthenticated(
                f"this call needs a service credential: metadata `authorization: {SCHEME} "
                "<credential id>:<unix seconds>:<hex Ed25519 signature>` (see `suara service issue`)"
            )
        parts = header[len(SCHEME) + 1 :].strip().split(":")
        if len(parts) != 3 or not _ID.match(parts[0]) or not parts[1].isdigit():
            raise Unauthenticated(f"malformed {SCHEME} token; expected <credential id>:<unix seconds>:<hex signature>")
        credential_id, stamp, signature_hex = parts
        try:
            signature = bytes.fromhex(signature_hex)
        except ValueError:
            raise Unauthenticated("the token's signature is not hex") from None
        unix_s = int(stamp)
        now = self._clock()
        if abs(now - unix_s) > self._skew:
            raise Unauthenticated(
                f"the token is {int(now - unix_s)} s from the server's clock (allowed ±{self._skew} s); "
                "check the caller's clock"
            )
        role, key = await self._credential(credential_id)
        try:
            key.verify(signature, signed_message(call.method, unix_s))
        except InvalidSignature:
            raise Unauthenticated(f"bad signature for {call.method} from credential {credential_id}") from None
        return Principal(credential_id, role)

    async def _credential(self, credential_id: str) -> tuple[str, Ed25519PublicKey]:
        now = time.monotonic()
        cached = self._cache.get(credential_id)
        if cached is not None and cached[0] > now:
            return cached[1], cached[2]
        forgotten = self._forgotten
        try:
            found = await self._store.lookup(credential_id)
        except DatabaseUnavailable as exc:
            raise Unavailable("cannot check the service credential right now") from exc
        if found is None:
            self._cache.pop(credential_id, None)
            raise Unauthenticated(f"unknown or revoked service credential {credential_id}")
        role, raw = found
        key = Ed25519PublicKey.from_public_bytes(raw)
        if len(self._cache) > 10_000:  # a handful of services call; bound it anyway
            self._cache.clear()
        if forgotten == self._forgotten:  # no revocation came while the store answered
            self._cache[credential_id] = (now + self._ttl, role, key)
        return role, key
