"""The CLI reference, docs/cli.md, generated from the argparse tree (`cli.build_parser()`).

`python -m cli.reference` writes it (`make docs`); `--check` exits 1 when the file differs from a
fresh generation (`make lint`). Help is formatted at a fixed width, so the file does not depend on
the terminal it is generated in.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import cast

import cli

WIDTH = 100  # columns of the help text (as argparse sees a terminal of WIDTH + 2)
PATH = Path(__file__).resolve().parent.parent / "docs" / "cli.md"

Tree = dict[str, tuple[argparse.ArgumentParser, str]]


def subcommands(parser: argparse.ArgumentParser) -> Tree:
    """name → (its parser, the one-line help its parent lists it with)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return {name: (sub, helps.get(name, "")) for name, sub in action.choices.items()}
    return {}


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, argparse.ArgumentParser, str]]:
    """Every command below `parser`, depth first: ("db migrate", its parser, its help line)."""
    for name, (sub, help) in subcommands(parser).items():
        yield " ".join((*path, name)), sub, help
        yield from walk(sub, (*path, name))


def help_text(parser: argparse.ArgumentParser) -> str:
    """`parser`'s --help as argparse prints it, at WIDTH columns whatever the terminal (sets its formatter)."""
    formatter = cast("Callable[..., argparse.HelpFormatter]", parser.formatter_class)

    def at_width(*, prog: str) -> argparse.HelpFormatter:
        return formatter(prog=prog, width=WIDTH)

    parser.formatter_class = at_width
    return parser.format_help()


def _anchor(command: str) -> str:
    return "#" + command.replace(" ", "-")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render() -> str:
    """docs/cli.md: an index of every command, then each command's --help."""
    root = cli.build_parser()  # a tree of its own: help_text sets each parser's formatter
    commands = list(walk(root))
    lines = [
        "# The `suara` command line",
        "",
        "<!-- Generated from the argparse tree by `python -m cli.reference` (`make docs`); do not edit. -->",
        "",
        "Every command's `--help`, as `suara COMMAND … --help` prints it. The environment settings every",
        "command reads are listed under [`suara`](#suara).",
        "",
        "| command | what it does |",
        "| --- | --- |",
    ]
    lines += [f"| [`suara {name}`]({_anchor('suara ' + name)}) | {_cell(help)} |" for name, _, help in commands]
    for name, parser, _ in [("", root, ""), *commands]:
        title = " ".join(("suara", name)).strip()
        level = "##" if " " not in name else "###"
        lines += ["", f"{level} {title}", "", "```text", help_text(parser).rstrip("\n"), "```"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cli.reference", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help=f"exit 1 if {PATH.name} is not current; write nothing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not PATH.is_file() or PATH.read_text() != text:
            print(f"{PATH} is not current: run `make docs`", file=sys.stderr)
            return 1
        return 0
    PATH.write_text(text)
    print(f"wrote {PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
