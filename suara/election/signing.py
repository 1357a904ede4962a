"""Ed25519 device keys: generate, sign, verify, and the key file a device keeps.

The signature covers the exact payload bytes. The device id is derived from
the public key, so it names the key, not a claim about it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nacl.bindings
import nacl.exceptions
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from suara.election.codes import KABUPATEN_KOTA_LENGTH, KECAMATAN_LENGTH, PROVINSI_LENGTH

SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32


def device_id_for(public_key: bytes) -> str:
    return "dev_" + hashlib.sha256(public_key).hexdigest()[:24]


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def sign(key: Ed25519PrivateKey, payload: bytes) -> bytes:
    return key.sign(payload)


def verify(public_key: bytes, payload: bytes, signature: bytes) -> bool:
    """libsodium's check, about half the CPU of OpenSSL's, and tally runs it on every form.

    It is also the stricter of the two (it refuses small-order keys and non-canonical signatures),
    which only ever refuses what no honest Ed25519 signer produces.
    """
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + payload, public_key)
    except nacl.exceptions.CryptoError:
        return False
    return True


def _key_file(kind: str, key: Ed25519PrivateKey, **fields: str) -> str:
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return json.dumps({"kind": kind, **fields, "ed25519_private": raw.hex()}, indent=2)


def _read_key_file(
    text: str, kind: str, id_field: str, id_for: Callable[[bytes], str]
) -> tuple[dict[str, str], Ed25519PrivateKey]:
    """The fields and key of a key file, checking its kind and that the id belongs to the key."""
    data = json.loads(text)
    if data.get("kind") != kind:
        raise ValueError(f"not a {kind} file")
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(data["ed25519_private"]))
    if id_for(public_bytes(key)) != data[id_field]:
        raise ValueError(f"key file is corrupt: the {id_field} does not match the key")
    return data, key


def _save_new(path: Path, text: str) -> None:
    """Readable by its owner only, and never replacing an existing key (O_EXCL)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")


@dataclass(frozen=True)
class DeviceKey:
    """What a KPPS device keeps: its TPS, its device id, its private key and the election it signs for
    ("" in a key file written before elections were named: then the form must say it)."""

    tps: str
    device_id: str
    private_key: Ed25519PrivateKey
    election_id: str = ""

    @classmethod
    def generate(cls, tps: str, election_id: str = "") -> DeviceKey:
        key = Ed25519PrivateKey.generate()
        return cls(tps=tps, device_id=device_id_for(public_bytes(key)), private_key=key, election_id=election_id)

    @property
    def public_key(self) -> bytes:
        return public_bytes(self.private_key)

    def sign(self, payload: bytes) -> bytes:
        return self.private_key.sign(payload)

    def to_json(self) -> str:
        return _key_file(
            "suara-device-key", self.private_key, tps=self.tps, device_id=self.device_id, election_id=self.election_id
        )

    @classmethod
    def from_json(cls, text: str) -> DeviceKey:
        data, key = _read_key_file(text, "suara-device-key", "device_id", device_id_for)
        return cls(
            tps=data["tps"], device_id=data["device_id"], private_key=key, election_id=data.get("election_id", "")
        )

    def save(self, path: Path) -> None:
        _save_new(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> DeviceKey:
        return cls.from_json(path.read_text())


# Officials of the tiered recap and the area level each role recaps (its code length).
OFFICIAL_ROLES: dict[str, int] = {
    "ppk": KECAMATAN_LENGTH,
    "kpu-kabkota": KABUPATEN_KOTA_LENGTH,
    "kpu-provinsi": PROVINSI_LENGTH,
}


def official_id_for(public_key: bytes) -> str:
    return "off_" + hashlib.sha256(public_key).hexdigest()[:24]


@dataclass(frozen=True)
class OfficialKey:
    """What a recap official keeps: their area, role, id and private key."""

    official_id: str
    area: str
    role: str
    private_key: Ed25519PrivateKey
    election_id: str = ""  # the election its recaps are signed for

    @classmethod
    def generate(cls, area: str, role: str, election_id: str = "") -> OfficialKey:
        if OFFICIAL_ROLES.get(role) != len(area) or not area.isdigit():
            roles = ", ".join(f"{r} ({n}-digit area)" for r, n in OFFICIAL_ROLES.items())
            raise ValueError(f"role {role!r} does not recap area {area!r}; the roles are {roles}")
        key = Ed25519PrivateKey.generate()
        return cls(official_id_for(public_bytes(key)), area, role, key, election_id)

    @property
    def public_key(self) -> bytes:
        return public_bytes(self.private_key)

    def sign(self, payload: bytes) -> bytes:
        return self.private_key.sign(payload)

    def to_json(self) -> str:
        return _key_file(
            "suara-official-key",
            self.private_key,
            official_id=self.official_id,
            area=self.area,
            role=self.role,
            election_id=self.election_id,
        )

    @classmethod
    def load(cls, path: Path) -> OfficialKey:
        try:
            data, key = _read_key_file(path.read_text(), "suara-official-key", "official_id", official_id_for)
        except (ValueError, KeyError) as exc:
            raise ValueError(f"{path}: {exc}") from exc
        return cls(data["official_id"], data["area"], data["role"], key, data.get("election_id", ""))

    def save(self, path: Path) -> None:
        _save_new(path, self.to_json())


def chain_key_id_for(public_key: bytes) -> str:
    return "chn_" + hashlib.sha256(public_key).hexdigest()[:24]


@dataclass(frozen=True)
class ChainKey:
    """tally's own key, which signs the chain heads it hands out for publishing (never in the database)."""

    key_id: str
    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> ChainKey:
        key = Ed25519PrivateKey.generate()
        return cls(chain_key_id_for(public_bytes(key)), key)

    @property
    def public_key(self) -> bytes:
        return public_bytes(self.private_key)

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    def to_json(self) -> str:
        return _key_file("suara-chain-key", self.private_key, key_id=self.key_id)

    @classmethod
    def load(cls, path: Path) -> ChainKey:
        try:
            data, key = _read_key_file(path.read_text(), "suara-chain-key", "key_id", chain_key_id_for)
        except (ValueError, KeyError) as exc:
            raise ValueError(f"{path}: {exc}") from exc
        return cls(data["key_id"], key)

    def save(self, path: Path) -> None:
        _save_new(path, self.to_json())

    @classmethod
    def load_or_create(cls, path: Path) -> tuple[ChainKey, bool]:
        """The key in `path`, or a new one saved there (True). Several processes starting at once end up
        with the same key: the file appears whole (written aside, then linked into place) or not at all."""
        if path.exists():
            return cls.load(path), False
        key = cls.generate()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        aside = path.with_name(f".{path.name}.{os.getpid()}.new")
        try:
            key.save(aside)
            try:
                os.link(aside, path)
            except FileExistsError:
                return cls.load(path), False
        finally:
            aside.unlink(missing_ok=True)
        return key, True
