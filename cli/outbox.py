"""`suara outbox status|flush`: what the device still has to send, and sending it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from suara.client.outbox import Entry
from suara.runtime.pki import KeyPair
from suara.runtime.settings import Settings
from suara.runtime.tls import ClientTls, client_tls

EXIT_REJECTED = 1
EXIT_PENDING = 3


def add_parser(sub: Any) -> None:
    outbox = sub.add_parser(
        "outbox",
        help="the device's local outbox of signed forms (status, flush)",
        description=(
            "Every form `suara submit` signs is written to a local outbox (SQLite, default\n"
            "SUARA_DATA_DIR/outbox.sqlite3) before it goes on the network, so nothing signed is lost\n"
            "when the network or tally is down. Sending a form again is always safe: tally answers\n"
            "DUPLICATE with the original receipt."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    osub = outbox.add_subparsers(dest="outbox_command", metavar="ACTION", required=True)

    status = osub.add_parser(
        "status",
        help="how many forms are pending, sent, rejected; the oldest pending; the last errors",
        description=(
            "Show the outbox: forms per state (pending: not yet acknowledged by tally; sent: stored\n"
            "by tally, with a receipt; rejected: refused by tally, with its reason), the oldest\n"
            "pending form and the most recent errors. Reads the local file only; no network."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_outbox_argument(status)
    status.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    status.set_defaults(handler=run_status)

    flush = osub.add_parser(
        "flush",
        help="send every pending form now, retrying until sent or the deadline",
        description=(
            "Send every pending form to tally, oldest first. While tally is unreachable or busy it\n"
            "retries with exponential backoff (full jitter), never sooner than tally's retry-after\n"
            "hint, until every form is answered or --deadline passes. Forms left pending stay safe\n"
            "in the outbox; run flush again later."
        ),
        epilog=(
            "exit status: 0 every pending form was sent; 1 tally rejected at least one (see\n"
            "`suara outbox status`); 3 some forms are still pending (network or tally down)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_target_argument(flush)
    add_outbox_argument(flush)
    flush.add_argument(
        "--deadline",
        type=float,
        default=120.0,
        metavar="S",
        help="stop retrying after S seconds; pending forms stay in the outbox (default: 120)",
    )
    flush.add_argument("--timeout", type=float, default=20.0, metavar="S", help="per-attempt deadline (default: 20)")
    flush.set_defaults(handler=run_flush)


def add_outbox_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--outbox", type=Path, metavar="PATH", help="the outbox file (default: SUARA_DATA_DIR/outbox.sqlite3)"
    )


def add_target_argument(parser: argparse.ArgumentParser) -> None:
    add_tls_arguments(parser, "tally's")
    parser.add_argument(
        "--target", metavar="HOST:PORT", help="tally's address (default: SUARA_TALLY_HOST:SUARA_TALLY_PORT)"
    )


def outbox_path(args: argparse.Namespace, settings: Settings) -> Path:
    return args.outbox or settings.data_dir / "outbox.sqlite3"


def add_tls_arguments(parser: argparse.ArgumentParser, whose: str) -> None:
    """--ca and --insecure: how a client verifies the server it calls."""
    parser.add_argument(
        "--ca", type=Path, metavar="PATH", help=f"the CA that signed {whose} certificate, PEM (default: SUARA_CA_FILE)"
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext, no TLS: only against a server started with SUARA_INSECURE=1, for debugging",
    )


def tls_of(args: argparse.Namespace, settings: Settings, identity: KeyPair | None = None) -> ClientTls | None:
    """The client TLS the flags and settings ask for (--ca over SUARA_CA_FILE); None for --insecure."""
    if args.insecure:
        settings = replace(settings, tls=replace(settings.tls, insecure=True))
    elif args.ca is not None:
        settings = replace(settings, tls=replace(settings.tls, ca_file=str(args.ca)))
    return client_tls(settings, identity)


def target_of(args: argparse.Namespace, settings: Settings) -> str:
    return args.target or f"{settings.tally.host}:{settings.tally.port}"


def entry_json(entry: Entry) -> dict[str, Any]:
    """An outbox entry for people and scripts: everything but the bytes."""
    return {
        "tps": entry.tps,
        "contest": entry.contest,
        "version": entry.version,
        "state": entry.state,
        "attempts": entry.attempts,
        "outcome": entry.outcome,
        "last_code": entry.last_code,
        "last_error": entry.last_error,
        "receipt": None if entry.receipt is None else vars(entry.receipt),
        "failed_checks": list(entry.failed_checks),
        "device_id": entry.device_id,
        "photos": len(entry.photos),
        "created_at": _iso(entry.created_at),
        "updated_at": _iso(entry.updated_at),
    }


def _iso(unix_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_s))


def _age(unix_s: float) -> str:
    seconds = max(0, int(time.time() - unix_s))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


async def run_status(args: argparse.Namespace, settings: Settings) -> int:
    from suara.client.outbox import Outbox, WrongKind

    path = outbox_path(args, settings)
    if not path.exists():
        print(f"no outbox at {path}: nothing has been submitted from here yet", file=sys.stderr)
        return 2
    try:
        outbox = await Outbox.open(path)
    except WrongKind as exc:
        print(f"{exc}: see `suara recap status`", file=sys.stderr)
        return 2
    async with outbox:
        status = await outbox.status()
    if args.json:
        print(
            json.dumps(
                {
                    "outbox": str(path),
                    "counts": status.counts,
                    "oldest_pending": None if status.oldest_pending is None else entry_json(status.oldest_pending),
                    "recent_errors": [entry_json(e) for e in status.recent_errors],
                },
                indent=2,
            )
        )
        return 0
    counts = status.counts
    print(f"outbox {path}")
    print(f"  pending {counts['pending']}, sent {counts['sent']}, rejected {counts['rejected']}")
    if status.oldest_pending is not None:
        e = status.oldest_pending
        print(
            f"  oldest pending: {e.describe()}, waiting {_age(e.created_at)}, {e.attempts} attempt(s)"
            + (f"; last error: {e.last_error}" if e.last_error else "")
        )
        print("  send them with: suara outbox flush")
    errors = [e for e in status.recent_errors if e != status.oldest_pending]
    if errors:
        print("  recent errors:")
    for e in errors:
        print(f"    {e.state} {e.describe()}: {e.last_code}: {e.last_error}")
    return 0


async def run_flush(args: argparse.Namespace, settings: Settings) -> int:
    from suara.client.outbox import WrongKind
    from suara.client.sdk import Client, Progress

    path = outbox_path(args, settings)
    if not path.exists():
        print(f"no outbox at {path}: nothing to send", file=sys.stderr)
        return 0
    target = target_of(args, settings)

    def progress(p: Progress) -> None:
        line = f"sent {p.sent}, rejected {p.rejected}, pending {p.pending}"
        if p.waiting_s:
            line += f"; retrying in {p.waiting_s:.1f} s ({p.last_error})"
        print(line, file=sys.stderr, flush=True)

    try:
        opened = await Client.open(path, target, tls=tls_of(args, settings), call_timeout_s=args.timeout)
    except WrongKind as exc:
        print(f"{exc}: send it with `suara recap send`", file=sys.stderr)
        return 2
    async with opened as client:
        pending = len(await client.outbox.pending())
        if not pending:
            print("nothing pending: every form in the outbox has been answered by tally")
            return 0
        print(f"sending {pending} pending form(s) to {target}", file=sys.stderr, flush=True)
        report = await client.flush(deadline_s=args.deadline, on_progress=progress)
    for e in report.sent:
        print(f"sent {e.describe()}: {e.outcome}, receipt {e.receipt.submission_id if e.receipt else '-'}")
    for e in report.rejected:
        print(f"REJECTED {e.describe()}: {e.last_code}: {e.last_error}")
    if report.pending:
        last = report.pending[0].last_error or "not attempted before the deadline"
        print(
            f"{len(report.pending)} form(s) still pending ({last}); they are safe in the outbox. "
            "Run `suara outbox flush` again when the network is back."
        )
        return EXIT_PENDING
    return EXIT_REJECTED if report.rejected else 0
