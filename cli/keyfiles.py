"""Key files the CLI creates for a device or an official: written before the key is enrolled."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Protocol


class SavesTo(Protocol):
    def save(self, path: Path) -> None: ...


def write_key_file(key: SavesTo, out: Path) -> bool:
    """Write the key file first, so no key is ever enrolled that nobody holds; False (having said why) if it
    cannot be written. The caller removes the file again if enrolling then fails."""
    try:
        key.save(out)
    except OSError as exc:
        print(f"cannot write the key file {out}: {exc.strerror}", file=sys.stderr)
        return False
    return True
