"""The admin credential: a bearer token internal systems (the CLI, the load generator) present to tally's
admin methods. Only the file format and how it is sent live here; the service keeps the token's hash."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from suara.runtime.secrets_file import write_secret

ADMIN_KIND: Final = "suara-admin-credential"
BEARER: Final = "Bearer"


@dataclass(frozen=True)
class AdminCredential:
    id: str
    token: str

    @classmethod
    def generate(cls) -> AdminCredential:
        return cls(id="adm_" + secrets.token_hex(6), token=secrets.token_urlsafe(32))

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata of an admin call."""
        return bearer_metadata(self.token)

    def to_json(self) -> str:
        return json.dumps({"kind": ADMIN_KIND, "id": self.id, "token": self.token}, indent=2)

    @classmethod
    def load(cls, path: Path) -> AdminCredential:
        data = json.loads(path.read_text())
        if data.get("kind") != ADMIN_KIND:
            raise ValueError(f"{path} is not a suara admin credential")
        return cls(data["id"], data["token"])

    def save(self, path: Path) -> None:
        write_secret(path, self.to_json() + "\n")


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"{BEARER} {token}"),)
