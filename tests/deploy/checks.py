"""What the deploy/ tests hold every manifest to: settings suara reads, and commands the `suara` CLI has.

The oracles are suara's own tables: `Settings.describe()` (every setting, as the README lists them) and
the CLI's argparse tree (`cli.build_parser()`), so a renamed setting or command fails here first.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path

import cli
from suara.runtime.settings import Settings

DEPLOY = Path(__file__).resolve().parent.parent.parent / "deploy"
SETTING_NAMES = frozenset(env for env, _, _ in Settings.describe())
# ${VAR}, ${VAR:?message}, ${VAR:-default}: compose's interpolation; $(VAR): Kubernetes' env references.
_INTERPOLATED = re.compile(r"\$\{(?P<compose>[A-Za-z_][A-Za-z0-9_]*)[^}]*\}|\$\((?P<k8s>[A-Za-z_][A-Za-z0-9_]*)\)")


def is_suara_variable(name: str) -> bool:
    """Whether a variable is meant for suara: its prefix, or the one unprefixed setting."""
    return name.startswith("SUARA_") or name == "DATABASE_URL"


def interpolated(text: str) -> set[str]:
    """The variables a value takes from elsewhere (compose's .env, another env var of the container)."""
    return {m["compose"] or m["k8s"] for m in _INTERPOLATED.finditer(text)}


# compose's interpolation: $$ (a literal $), ${VAR}, ${VAR:?message}, ${VAR:-default}, $VAR.
_COMPOSE_VARIABLE = re.compile(
    r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:[?-])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def compose_interpolate(text: str, env: Mapping[str, str]) -> str:
    """`text` as docker compose hands it to the container, its variables taken from `env`."""

    def value(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m["braced"] or m["bare"]
        found = env.get(name, "")
        if not found and m["op"] == ":?":
            raise AssertionError(f"compose needs {name}: {m['arg']}")
        return m["arg"] if not found and m["op"] == ":-" else found

    return _COMPOSE_VARIABLE.sub(value, text)


def check_settings(env: Mapping[str, str], where: str) -> None:
    """Every suara variable in `env` is a real setting, and the values (placeholders filled) are valid."""
    unknown = sorted(name for name in env if is_suara_variable(name) and name not in SETTING_NAMES)
    assert not unknown, f"{where}: not suara settings: {unknown}"
    filled = {name: _INTERPOLATED.sub("placeholder", str(value)) for name, value in env.items()}
    Settings.from_env({name: value for name, value in filled.items() if is_suara_variable(name)})  # raises if bad


def parse_suara(argv: list[str], where: str) -> argparse.Namespace:
    """`suara ARGV…` as the CLI parses it; an AssertionError saying why when it is no real command."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return cli.build_parser().parse_args(argv)
    except SystemExit:
        raise AssertionError(f"{where}: `suara {shlex.join(argv)}` is not a suara command: {err.getvalue()}") from None


def suara_lines(script: str) -> Iterable[list[str]]:
    """The `suara …` commands of a shell script, one per line (the scripts here keep them so)."""
    for line in script.splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "suara":
            yield words[1:]
