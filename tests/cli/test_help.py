"""Every command describes itself: `suara --help`, `suara GROUP --help`, `suara GROUP ACTION --help`.

The command tree is read from `cli.build_parser()`, so a command added later (a new
group, a new action, or a top-level command without actions) is covered without touching
this file.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

import cli
from cli.reference import subcommands, walk
from suara.runtime.settings import Settings
from tests.support.processes import SUARA, suara_env

ROOT = cli.build_parser()
TOP = subcommands(ROOT)
NODES = {name: (sub, help) for name, sub, help in walk(ROOT)}
# A group only dispatches (`suara db`); an action runs (`suara db migrate`, or a top-level leaf).
GROUPS = {name: node for name, node in NODES.items() if subcommands(node[0])}
ACTIONS = {name: node for name, node in NODES.items() if not subcommands(node[0])}


def squash(text: str) -> str:
    """Whitespace-insensitive form: argparse re-wraps text to the terminal width."""
    return " ".join(text.split())


def help_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--help"])
    assert exit_info.value.code == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out


def test_the_tree_is_not_empty() -> None:
    # Guards the parametrizations below against silently covering nothing.
    assert set(TOP) == set(cli.GROUPS)
    assert GROUPS and ACTIONS
    assert all(subcommands(group) for group, _ in GROUPS.values())


def test_top_level_help_lists_every_group_and_every_setting() -> None:
    """The installed script, as a newcomer first runs it."""
    proc = subprocess.run(
        [str(SUARA), "--help"], env=suara_env(), capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    out = squash(proc.stdout)
    assert out.startswith("usage: suara")
    for command, (_, help) in TOP.items():
        assert help.strip(), f"`suara {command}` has no help line"
        assert f"{command} {squash(help)}" in out
    assert "environment:" in out
    for env, default, help in Settings.describe():
        assert env in out and squash(help) in out, f"{env} missing from the environment table"
        if default:
            assert f"(default: {default})" in out


def test_no_command_is_a_usage_error() -> None:
    proc = subprocess.run([str(SUARA)], env=suara_env(), capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "usage: suara" in proc.stderr


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_group_help_lists_its_actions(group: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = help_of(group.split(), capsys)
    assert out.startswith(f"usage: suara {group}")
    for action, (_, help) in subcommands(GROUPS[group][0]).items():
        assert help.strip(), f"`suara {group} {action}` has no help line"
        assert f"{action} {squash(help)}" in squash(out)


@pytest.mark.parametrize("command", sorted(ACTIONS))
def test_action_help_exits_0_with_its_usage_and_options(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser, help = ACTIONS[command]
    assert help.strip(), f"`suara {command}` has no help line"
    out = help_of(command.split(), capsys)
    assert out.startswith(f"usage: suara {command}")
    for action in parser._actions:
        for option in action.option_strings:
            assert option in out
        if action.help and action.help != argparse.SUPPRESS:
            text = action.help % {**vars(action), "prog": parser.prog}  # as argparse expands %(default)s
            assert squash(text) in squash(out), f"help of {action.dest} missing"


@pytest.mark.parametrize("command", sorted(ACTIONS))
def test_action_help_says_what_the_action_does(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser, _ = ACTIONS[command]
    out = squash(help_of(command.split(), capsys))
    described = parser.description or ""
    assert described.strip(), f"`suara {command} --help` has no description"
    assert squash(described) in out


def test_python_dash_m_runs_the_cli() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "--help"],
        env=suara_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: suara")
