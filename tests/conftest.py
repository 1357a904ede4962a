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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The failure drills' figures (each test's `record_property("figures", …)`), printed after every run,
    with or without -s or xdist: CI's log carries them."""
    lines = [
        f"{report.nodeid}: {value}"
        for outcome in ("passed", "failed")
        for report in terminalreporter.stats.get(outcome, [])
        for name, value in getattr(report, "user_properties", [])
        if name == "figures"
    ]
    if lines:
        terminalreporter.section("drill figures")
        for line in lines:
            terminalreporter.write_line(line)
