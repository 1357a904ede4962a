"""The documents are part of the contract: the README's configuration table matches the settings and it shows
the two commands; docs/cli.md is the CLI's own --help, current."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from cli import GROUPS, reference
from suara.runtime.settings import Settings, settings_markdown
from tests.support.processes import SUARA, suara_env


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
    text = _readme(repo_root)
    for group in GROUPS:
        assert f"`suara {group}" in text, f"README does not mention `suara {group}`"


def test_the_cli_reference_is_current(repo_root: Path) -> None:
    """docs/cli.md is what `make docs` writes from the command tree as it is now."""
    written = (repo_root / "docs" / "cli.md").read_text()
    assert written == reference.render(), "docs/cli.md differs from the CLI's --help: run `make docs`"


def test_the_cli_reference_shows_each_command_as_the_script_prints_its_help(repo_root: Path) -> None:
    """Not vacuous: every command has its section, and the installed script's own --help, at the
    reference's width, is in it word for word."""
    text = (repo_root / "docs" / "cli.md").read_text()
    for group in GROUPS:
        assert f"\n## suara {group}\n" in text, f"no section for `suara {group}`"
    for argv in ([], ["registry", "load"], ["outbox", "flush"]):
        env = suara_env(COLUMNS=str(reference.WIDTH + 2))  # argparse wraps at COLUMNS - 2
        shown = subprocess.run(
            [str(SUARA), *argv, "--help"], env=env, capture_output=True, text=True, timeout=60, check=True
        ).stdout
        assert shown.startswith(f"usage: {' '.join(('suara', *argv))}")
        assert f"```text\n{shown.rstrip()}\n```" in text, f"`suara {' '.join(argv)} --help` is not in docs/cli.md"


def _documents(repo_root: Path) -> list[Path]:
    found = [repo_root / "README.md", *sorted((repo_root / "docs").glob("*.md")), *(repo_root / "deploy").rglob("*.md")]
    assert len(found) > 5, found
    return found


_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def test_every_document_link_stays_in_the_repository_and_resolves(repo_root: Path) -> None:
    """A clone has only what is in it: no link to ../shared or elsewhere outside, none to a missing file."""
    broken = []
    for doc in _documents(repo_root):
        text = doc.read_text()
        if "../shared" in text or "shared/reference" in text:
            broken.append(f"{doc.name}: names ../shared, which a clone does not have")
        for target in _LINK.findall(text):
            if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                continue
            resolved = (doc.parent / target).resolve()
            if not resolved.is_relative_to(repo_root.resolve()) or not resolved.exists():
                broken.append(f"{doc.name}: ({target})")
    assert broken == []


def test_the_link_check_sees_a_link(tmp_path: Path) -> None:
    assert _LINK.findall("see [the layout](docs/layout.md#tps) and [x](https://a.b)") == [
        "docs/layout.md",
        "https://a.b",
    ]


def test_every_test_the_threat_model_points_at_exists(repo_root: Path) -> None:
    """Each row names its test as `tests/….py::test_name` (or `::test_name`, in the file named before it on the
    row): a renamed or removed test must take its row along, or the model promises what nothing shows."""
    text = (repo_root / "docs" / "threat-model.md").read_text()
    missing: list[str] = []
    cited = 0
    for line in text.splitlines():
        current: Path | None = None
        for path, name in re.findall(r"`(tests/[\w/]+\.py)?(?:::(\w+))?[^`]*`", line):
            if path:
                current = repo_root / path
                if not current.exists():
                    missing.append(path)
                    continue
            if name and current is not None:
                cited += 1
                if not re.search(rf"^(async )?def {name}\(", current.read_text(), re.MULTILINE):
                    missing.append(f"{current.relative_to(repo_root)}::{name}")
    assert cited > 20
    assert not missing, missing
