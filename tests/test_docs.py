"""The README is part of the contract: its configuration table matches the settings, and it shows the two commands."""

from __future__ import annotations

import re
from pathlib import Path

from suara.runtime.settings import Settings, settings_markdown


def _readme(repo_root: Path) -> str:
    return (repo_root / "README.md").read_text()


def test_readme_configuration_table_is_the_settings_table(repo_root: Path) -> None:
    """Every setting, in the settings' own order and groups: regenerate it with `settings_markdown()`."""
    text = _readme(repo_root)
    assert settings_markdown() in text
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \|", text, re.MULTILINE)
    assert rows == [env for env, _, _ in Settings.describe()]  # no row left over from an older table


def test_readme_shows_the_two_commands_first(repo_root: Path) -> None:
    text = _readme(repo_root)
    first_block = text[text.index("```sh") : text.index("```", text.index("```sh") + 5)]
    assert "make demo" in first_block and "make test" in first_block


def test_every_cli_group_is_in_the_readme(repo_root: Path) -> None:
    from cli import GROUPS

    text = _readme(repo_root)
    for group in GROUPS:
        assert f"`suara {group}" in text, f"README does not mention `suara {group}`"
