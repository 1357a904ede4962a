"""Fixtures every test package may ask for, registered once from tests/support (see its modules)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "tests.support.databases",
    "tests.support.tally",
    "tests.support.publish",
    "tests.support.s3",
]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
