"""What every `suara SERVICE serve` shares: where it binds (flags over settings), then serve until a signal."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import replace

from cli.embedded import service_database_url
from suara.runtime.settings import Settings

Serve = Callable[[Settings, str], Awaitable[None]]


def add_bind_arguments(p: argparse.ArgumentParser, section: str, *, host: bool = True) -> None:
    """--host and --port for the settings section `section` (tally, aggregate, publish)."""
    env = f"SUARA_{section.upper()}"
    if host:
        p.add_argument("--host", help=f"bind address (default: {env}_HOST)")
    p.add_argument("--port", type=int, help=f"port, 0 for any free one (default: {env}_PORT)")


def bound(settings: Settings, section: str, args: argparse.Namespace) -> Settings:
    """`settings` with the section's host and port taken from the flags given (checked like any setting)."""
    part = getattr(settings, section)
    if getattr(args, "host", None):
        part = replace(part, host=args.host)
    if args.port is not None:
        part = replace(part, port=args.port)
    return replace(settings, **{section: part})


async def serve_section(args: argparse.Namespace, settings: Settings, section: str, serve: Serve) -> int:
    settings = bound(settings, section, args)
    with service_database_url(settings, section) as url:  # as the service's own role
        await serve(settings, url)
    return 0
