"""Local ports for tests."""

from __future__ import annotations

from cli.embedded import free_port


def closed_port() -> int:
    """A local port nothing listens on: connecting is refused at once, like a phone with no signal."""
    return free_port()
