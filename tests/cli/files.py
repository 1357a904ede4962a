"""The files an operator's commands write: their modes, a directory's listing."""

from __future__ import annotations

import stat
from pathlib import Path


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def files_in(directory: Path) -> list[Path]:
    return sorted(directory.iterdir())
