"""`suara`: the one command-line entry point.

Each command group lives in its own module with an `add_parser(subparsers)`
function; this module wires them up. The CLI is the composition root: it is
the one place that knows every service.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import sys
from collections.abc import Callable, Sequence

from suara.runtime.logging import configure_logging
from suara.runtime.settings import SettingError, Settings, settings_help
from suara.runtime.tracing import configure_tracing

GROUPS = (
    "db",
    "registry",
    "rehearsal",
    "admin",
    "device",
    "tally",
    "aggregate",
    "publish",
    "service",
    "audit",
    "demo",
    "up",
    "cluster",
    "loadtest",
    "official",
    "recap",
    "submit",
    "outbox",
    "pki",
    "health",
)
# Commands that run services: the roots of their traces are the calls they serve, not the ones they make.
SERVING = frozenset({"tally", "aggregate", "publish", "service", "up", "cluster"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="suara",
        description=(
            "suara: the vote-tally backbone. TPS devices submit signed C.Hasil forms to tally;\n"
            "aggregate rolls them up to every level; publish writes the public static site.\n"
            "Without DATABASE_URL, suara runs its own embedded PostgreSQL in SUARA_DATA_DIR."
        ),
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    import importlib

    for group in GROUPS:
        importlib.import_module(f"cli.{group}").add_parser(sub)
    return parser


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop cuts the event loop's own share of each call (asyncpg's protocol and gRPC's callbacks)."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    if name == "asyncio":
        return asyncio.new_event_loop
    raise SystemExit(f"SUARA_EVENT_LOOP must be uvloop or asyncio, not {name!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    tracing = None
    try:
        settings = Settings.from_env()
        configure_logging(settings.log.level, settings.log.format, service=f"suara-{args.command}")
        tracing = configure_tracing(f"suara-{args.command}", os.environ, quiet_client_roots=args.command in SERVING)
        result = args.handler(args, settings)
        if inspect.isawaitable(result):
            with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
                result = runner.run(result)  # type: ignore[arg-type]
    except SettingError as error:  # from the environment, or a flag standing in for a setting
        print(f"suara: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if tracing is not None:
            tracing.shutdown()  # what is buffered goes to the collector before the process ends
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
