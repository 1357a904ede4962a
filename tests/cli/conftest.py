"""The environment the CLI tests run `suara` in (tests/support/processes.py runs it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.processes import suara_env
from tests.support.tally import PHOTO_STORE


@pytest.fixture
def cli_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    """The environment of an operator pointing suara at the test database (and the in-process tally's photos)."""
    return suara_env(DATABASE_URL=db_url, SUARA_DATA_DIR=tmp_path / "state", SUARA_PHOTO_STORE=PHOTO_STORE)
