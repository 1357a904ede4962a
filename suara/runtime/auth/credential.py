"""The service credential a calling service keeps, its key file, and the token it signs for each call.

A credential is an id, a role and an Ed25519 key pair. The caller keeps the
private key in a file; the protected service keeps id → (role, public key,
revoked) (see suara.runtime.auth.store). Every call carries

    authorization: Suara-Service <credential id>:<unix seconds>:<hex signature>

where the signature covers "<full method>\\n<unix seconds>", so a token is good
for one method and ±MAX_SKEW_S only: a captured one cannot be turned into
another call, and replays are bounded by the window (TLS is the deployment's
answer to replay within it). No shared secret is stored server side: a dump of
the table grants nothing.

Roles are disjoint on purpose (least privilege): a writer (tally's relay, a
federated aggregate) may only Apply*, a reader (publish) only read. A leaked
relay key cannot scrape, a leaked publish key cannot change totals. A process
that needs both holds two credentials.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from suara.runtime.secrets_file import write_secret

Role = Literal["writer", "reader"]
ROLES: Final[tuple[Role, ...]] = ("writer", "reader")
SCHEME: Final = "Suara-Service"
MAX_SKEW_S: Final = 60
CREDENTIAL_KIND: Final = "suara-service-credential"


def signed_message(method: str, unix_s: int) -> bytes:
    return f"{method}\n{unix_s}".encode()


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
