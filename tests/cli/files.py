"""The files an operator's commands read and write: their modes, a directory's listing, form and key files."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from suara.election.form import form_to_dict
from suara.election.signing import DeviceKey
from tests.support.factories import TEST_ELECTION, consistent_form
from tests.support.tally import Tally

PRIVATE = 0o600  # owner read/write only, as the commands writing secrets document


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def files_in(directory: Path) -> list[Path]:
    return sorted(directory.iterdir())


def write_form(tally: Tally, tps: str, path: Path, version: int = 1) -> Path:
    path.write_text(json.dumps(form_to_dict(consistent_form(tps, "ppwp", tally.contests["ppwp"], version))))
    return path


def key_path(tmp_path: Path) -> Path:
    return tmp_path / "device.key.json"


def write_key(tps: str, path: Path) -> DeviceKey:
    key = DeviceKey.generate(tps, TEST_ELECTION)
    key.save(path)
    return key
