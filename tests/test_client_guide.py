"""The client guide's worked example holds: a client in another language checks itself against it."""

from __future__ import annotations

import re
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.protobuf import json_format

from suara.election.signing import device_id_for
from suara.v1 import form_pb2


def _example(repo_root: Path) -> tuple[str, dict[str, str]]:
    text = (repo_root / "docs" / "client-guide.md").read_text()
    section = text[text.index("### 2.7 Worked example") :]
    form_json = section[section.index("```json\n") + 8 : section.index("\n```", section.index("```json\n"))]
    values = dict(re.findall(r"^(private key|public key|device_id|payload|signature):\s+(\S+)$", section, re.M))
    return form_json, values


def test_the_worked_example_is_the_form_signed_by_the_key(repo_root: Path) -> None:
    form_json, values = _example(repo_root)
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(values["private key"]))
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert public.hex() == values["public key"]
    assert device_id_for(public) == values["device_id"]
    form = json_format.Parse(form_json, form_pb2.CHasilForm())
    payload = bytes.fromhex(values["payload"])
    assert form_pb2.CHasilForm.FromString(payload) == form
    assert form.SerializeToString(deterministic=True) == payload  # the canonical encoding, as the guide says
    signature = bytes.fromhex(values["signature"])
    Ed25519PublicKey.from_public_bytes(public).verify(signature, payload)  # raises if it does not verify
    assert key.sign(payload) == signature  # Ed25519 is deterministic: the same key and bytes, the same signature
