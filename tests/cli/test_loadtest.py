"""`suara loadtest`'s command line against the load test it configures."""

from __future__ import annotations

from cli import build_parser
from loadtest.config import Config


def test_the_command_line_defaults_are_the_load_tests_own() -> None:
    """The CLI spells its defaults out (it does not import the load test to draw its --help)."""
    args = build_parser().parse_args(["loadtest"])
    config = Config(target="t", admin_token="a", site="s")
    assert (args.concurrency, args.scale, args.faults, args.seed) == (
        config.concurrency,
        config.scale,
        config.faults,
        config.seed,
    )
