"""`suara recap fetch|show|enter|sign|send|status`: the recap official's tool, which works offline.

Only `fetch`, `send` and `status` use the network; the plenary's own steps (show, enter, sign) read
and write files on the official's machine, so they never wait for a server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from cli.outbox import EXIT_PENDING, EXIT_REJECTED, add_tls_arguments, entry_json, tls_of
from suara.runtime.settings import Settings

EXIT_USAGE = 2

_STEPS = """\
The plenary, step by step (each step says what to do next):
  1. online, before:  suara recap fetch --key KEY --site URL     (the area's TPS and digital numbers)
  2. offline:         suara recap show --key KEY                  (the sheet: what is entered, what differs)
  3. offline:         suara recap enter --key KEY [--file F.csv]  (the numbers read out, per TPS or area)
  4. offline:         suara recap sign --key KEY                  (sign the D.Hasil; kept in the outbox)
  5. when online:     suara recap send                            (sends what is waiting; safe to repeat)
  6. after:           suara recap status --key KEY --site URL     (is the recap reconciled?)
Files live in SUARA_DATA_DIR/recap (or --dir): a snapshot and the paper per area and contest, and
outbox.sqlite3. Nothing is lost when the machine is switched off between steps."""


def add_parser(sub: Any) -> None:
    recap = sub.add_parser(
        "recap",
        help="the recap official's tool (PPK, KPU): compile, compare, sign and send the D.Hasil, offline",
        description=(
            "For a recap official (rekapitulasi berjenjang). Works from files on this machine, so the\n"
            "plenary never waits for a server: the area's last snapshot (fetched while online), the\n"
            "numbers read out in the plenary, and an outbox that sends the signed recap when the network\n"
            "is back. The key is the one `suara official enroll` wrote for the official's area.\n\n" + _STEPS
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rsub = recap.add_subparsers(dest="recap_command", metavar="ACTION", required=True)

    fetch = _action(
        rsub,
        "fetch",
        "download the area's units and their digital numbers from the public site (online)",
        "Read the area of the key from the published site (an http(s):// URL, or a copy of the site's\n"
        "directory): its TPS (for a kecamatan) or child areas, each with the numbers its digital forms\n"
        "say, and the area's reconciliation status. Kept in a snapshot file; fetch again to refresh it\n"
        "(the numbers already entered are kept). A province reads every TPS file under it: fetch it\n"
        "well before the plenary.\n\n"
        "An office with a reader certificate may read aggregate instead (--reader-target and\n"
        "--credential): the same numbers in one consistent read; with --site too, the choices' names\n"
        "come from the site (aggregate knows only their ids).",
    )
    fetch.add_argument("--site", metavar="URL-or-DIR", help="the public site, or a directory copy")
    fetch.add_argument("--reader-target", metavar="HOST:PORT", help="aggregate's internal address (mutual TLS)")
    fetch.add_argument("--credential", type=Path, metavar="PEM", help="a reader client certificate with its key")
    add_tls_arguments(fetch, "aggregate's")
    fetch.set_defaults(handler=run_fetch)

    show = _action(
        rsub,
        "show",
        "the sheet: every unit's digital and paper numbers, and where they differ (offline)",
        "Compile the area's D.Hasil from the snapshot and the numbers entered: per unit (TPS or area)\n"
        "whether its paper numbers are entered and where they differ from the digital form, then the\n"
        "area's totals both ways.",
    )
    show.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    show.set_defaults(handler=run_show)

    enter = _action(
        rsub,
        "enter",
        "enter the numbers read out in the plenary, from a file or one unit at a time (offline)",
        "Enter the paper numbers of units. With --file: a CSV whose first line names the columns\n"
        "(kode, then each choice by id or nomor urut, then suara_sah, suara_tidak_sah, suara_total,\n"
        "dpt, pengguna), or a JSON object {kode: {field: count}}; every problem is named at once and\n"
        "nothing is taken until the file is right. Without --file: asks, unit by unit, showing the\n"
        "digital numbers; answer y when the paper says the same, n to type each number. Every unit is\n"
        "saved as soon as it is entered. Entering a unit again replaces its numbers.",
        epilog="`suara recap sheet-template` writes a CSV with the right columns and every unit's kode.",
    )
    enter.add_argument("--file", type=Path, metavar="FILE", help="a CSV or JSON file of paper numbers")
    enter.add_argument("--unit", action="append", default=[], metavar="KODE", help="only this unit (repeatable)")
    enter.set_defaults(handler=run_enter)

    template = _action(
        rsub,
        "sheet-template",
        "write a CSV with the right columns and every unit's kode, for `enter --file` (offline)",
        "Write a CSV for `suara recap enter --file`: the header, and a line per unit with its kode and\n"
        "name and empty counts to fill in from the paper.",
    )
    template.add_argument("--out", type=Path, required=True, metavar="FILE", help="the CSV to write")
    template.set_defaults(handler=run_template)

    sign = _action(
        rsub,
        "sign",
        "sign the area's recap (the paper numbers summed), keep it in the outbox, try once to send",
        "Sum the paper numbers of every unit into the area's D.Hasil, sign it with the official's key\n"
        "and save it in the outbox before anything goes on the network; then try once to send it (unless\n"
        "--offline). Signing the same numbers again is the same recap; other numbers are a correction\n"
        "with the next version. Refused, naming them, while any unit has no paper numbers.",
        epilog=(
            "exit status: 0 sent and stored by aggregate; 3 saved in the outbox, not sent yet (send it with\n"
            "`suara recap send`); 1 refused by aggregate (the reason is printed); 2 nothing signed."
        ),
    )
    _target_arguments(sign)
    sign.add_argument("--offline", action="store_true", help="do not try to send now")
    sign.set_defaults(handler=run_sign)

    send = _action(
        rsub,
        "send",
        "send every signed recap still waiting in the outbox, retrying until --deadline",
        "Send the outbox's waiting recaps to aggregate, retrying with backoff while it cannot be\n"
        "reached. Sending one again is always safe: aggregate answers DUPLICATE with the same recap id.",
        epilog="exit status: 0 all sent; 1 aggregate refused one; 3 some still waiting (network down).",
        key=False,
    )
    _target_arguments(send)
    send.add_argument(
        "--deadline", type=float, default=60.0, metavar="S", help="stop retrying after S seconds (default: 60)"
    )
    send.set_defaults(handler=run_send)

    status = _action(
        rsub,
        "status",
        "the area's recaps in the outbox, and whether the recap is reconciled (site, aggregate)",
        "Show the area's recaps in the outbox (waiting, sent, refused), and how the current recap\n"
        "compares with the digital count: from the public site's status file (--site), and from\n"
        "aggregate's GetReconciliation and ListMismatches (--reader-target with --credential, a reader\n"
        "certificate), with every field that differs.",
    )
    status.add_argument("--site", metavar="URL-or-DIR", help="read the reconciliation the site publishes")
    status.add_argument("--reader-target", metavar="HOST:PORT", help="aggregate's internal address (mutual TLS)")
    status.add_argument("--credential", type=Path, metavar="PEM", help="a reader client certificate with its key")
    add_tls_arguments(status, "aggregate's")
    status.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    status.set_defaults(handler=run_status)


def _action(
    sub: Any, name: str, help_: str, description: str, epilog: str | None = None, key: bool = True
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=help_, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if key:
        p.add_argument("--key", type=Path, required=True, metavar="KEYFILE", help="the official's key file")
        p.add_argument("--contest", default="ppwp", help="the contest (ppwp, pdpr, …; default: ppwp)")
    p.add_argument("--dir", type=Path, metavar="DIR", help="where the recap files live (default: SUARA_DATA_DIR/recap)")
    return p


def _target_arguments(p: argparse.ArgumentParser) -> None:
    add_tls_arguments(p, "aggregate's")
    p.add_argument(
        "--target", metavar="HOST:PORT", help="aggregate's public address (default: SUARA_AGGREGATE_HOST:PORT)"
    )
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="per-attempt deadline (default: 10)")


class Stop(Exception):
    """A refusal to print as it is, with the exit status."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def _dir(args: argparse.Namespace, settings: Settings) -> Path:
    return args.dir or settings.data_dir / "recap"


def _key(args: argparse.Namespace) -> Any:
    from suara.election.signing import OfficialKey

    try:
        return OfficialKey.load(args.key)
    except (OSError, ValueError, KeyError) as exc:
        raise Stop(f"cannot read the official's key file {args.key}: {exc}") from exc


def _sheet(args: argparse.Namespace, settings: Settings) -> tuple[Any, Any, Path, Path]:
    from suara.client.recap import load_snapshot, sheet_paths

    key = _key(args)
    snapshot_path, paper_path = sheet_paths(_dir(args, settings), key.area, args.contest)
    if not snapshot_path.exists():
        raise Stop(
            f"no snapshot of area {key.area} ({args.contest}) in {snapshot_path.parent}: "
            f"fetch it while online with `suara recap fetch --key {args.key} --contest {args.contest} --site URL`"
        )
    return key, load_snapshot(snapshot_path), snapshot_path, paper_path


def _handled(fn: Any) -> Any:
    async def run(args: argparse.Namespace, settings: Settings) -> int:
        from suara.client.outbox import WrongKind

        try:
            code: int = await fn(args, settings)
        except Stop as stop:
            print(stop, file=sys.stderr)
            return stop.code
        except WrongKind as exc:  # --dir names a device's outbox
            print(exc, file=sys.stderr)
            return EXIT_USAGE
        return code

    return run


@_handled
async def run_fetch(args: argparse.Namespace, settings: Settings) -> int:
    from cli.recap_fetch import SiteIncomplete, read_choices, read_sheet
    from suara.client.recap import load_paper, sheet_paths, write_json
    from suara.site.audit import SiteUnreadable, site_reader

    key = _key(args)
    snapshot_path, paper_path = sheet_paths(_dir(args, settings), key.area, args.contest)

    def progress(done: int, total: int) -> None:
        if done == total or done % 100 == 0:
            print(f"\r  read {done} of {total} TPS files", end="\n" if done == total else "", file=sys.stderr)

    if args.site is None and args.reader_target is None:
        raise Stop("fetch from where? give --site URL-or-DIR, or --reader-target with --credential")
    if args.reader_target is not None and args.credential is None:
        raise Stop("--reader-target needs --credential (a reader client certificate, PEM with its key)")
    try:
        if args.reader_target is None:
            snapshot = await asyncio.to_thread(
                read_sheet, site_reader(args.site), args.site, args.contest, key.area, progress
            )
        else:
            choices = None if args.site is None else read_choices(site_reader(args.site), args.contest)
            snapshot = await _from_aggregate(args, settings, key.area, choices)
    except (SiteUnreadable, SiteIncomplete) as exc:
        raise Stop(f"cannot fetch area {key.area} from {args.site}: {exc}", 1) from exc
    write_json(snapshot_path, snapshot.to_json())
    reported = sum(u.tps_reported for u in snapshot.units)
    total = sum(u.tps_total for u in snapshot.units)
    entered = len(load_paper(paper_path))
    print(
        f"fetched {snapshot.name} ({key.area}), {args.contest}: {len(snapshot.units)} units, "
        f"{reported} of {total} TPS counted digitally ({_when(snapshot)})"
    )
    print(f"saved to {snapshot_path}; paper numbers entered so far: {entered} of {len(snapshot.units)} units")
    print(f"next: suara recap enter --key {args.key} --contest {args.contest}")
    return 0


def _when(snapshot: Any) -> str:
    if snapshot.site_snapshot is None:
        return str(snapshot.site_ts)
    return f"site snapshot {snapshot.site_snapshot}, {snapshot.site_ts}"


async def _from_aggregate(args: argparse.Namespace, settings: Settings, area: str, choices: Any) -> Any:
    import grpc

    from cli.recap_fetch import read_sheet_from_aggregate

    async with _reader_channel(args, settings) as channel:
        try:
            return await read_sheet_from_aggregate(channel, args.reader_target, args.contest, area, choices)
        except grpc.aio.AioRpcError as exc:
            raise Stop(f"cannot fetch area {area} from aggregate: {exc.code().name}: {exc.details()}", 1) from exc


def _reader_channel(args: argparse.Namespace, settings: Settings) -> Any:
    from suara.runtime.tls import client_tls, open_channel

    if args.ca is not None:
        settings = replace(settings, tls=replace(settings.tls, ca_file=str(args.ca)))
    return open_channel(args.reader_target, client_tls(settings, bundle=args.credential))


def _labels(snapshot: Any) -> dict[str, str]:
    """Each field as the paper names it: a choice by nomor urut and name, a count in words."""
    from suara.election.recap_sheet import LABELS

    return {f"votes[{c.id}]": f"{c.number}. {c.name}" for c in snapshot.choices} | LABELS


def _fmt(counts: dict[str, int] | None, fields: list[str]) -> str:
    if counts is None:
        return "no counted digital form"
    return "  ".join(f"{f}={counts.get(f, 0):,}" for f in fields)


@_handled
async def run_show(args: argparse.Namespace, settings: Settings) -> int:
    from suara.client.recap import load_paper
    from suara.election.recap_sheet import compile_sheet

    _, snapshot, _, paper_path = _sheet(args, settings)
    paper = load_paper(paper_path)
    comparison = compile_sheet(snapshot, paper)
    if args.json:
        print(
            json.dumps(
                {
                    "area": snapshot.area,
                    "contest": snapshot.contest,
                    "fetched_at": snapshot.fetched_at,
                    "recap": comparison.recap,
                    "digital": comparison.digital,
                    "missing_paper": comparison.missing_paper,
                    "no_digital": comparison.no_digital,
                    "incomplete": comparison.incomplete,
                    "differences": {
                        unit: [{"field": d.field, "paper": d.paper, "digital": d.digital} for d in diffs]
                        for unit, diffs in comparison.differences.items()
                    },
                },
                indent=2,
            )
        )
        return 0
    print(f"D.Hasil {snapshot.name} ({snapshot.area}), {snapshot.contest}; digital numbers of {snapshot.fetched_at}")
    for unit in snapshot.units:
        read = paper.get(unit.code)
        if read is None:
            mark = "not entered"
        elif unit.code in comparison.differences:
            labels = _labels(snapshot)
            diffs = comparison.differences[unit.code]
            mark = "DIFFERS: " + "; ".join(f"{labels[d.field]} paper {d.paper:,}, digital {d.digital:,}" for d in diffs)
        elif unit.digital is None:
            mark = "entered; no counted digital form to compare"
        else:
            mark = "entered, same as digital"
        counted = "" if unit.tps_total == 1 else f" [{unit.tps_reported}/{unit.tps_total} TPS counted]"
        print(f"  {unit.code} {unit.name}{counted}: {mark}")
    fields = snapshot.fields
    print(f"digital total: {_fmt(comparison.digital, fields)}")
    if comparison.recap is None:
        print(f"paper total: {len(comparison.missing_paper)} of {len(snapshot.units)} units not entered yet")
        print(f"next: suara recap enter --key {args.key} --contest {args.contest}")
    else:
        print(f"paper total:   {_fmt(comparison.recap, fields)}")
        print(f"{len(comparison.differences)} unit(s) differ; next: suara recap sign --key {args.key}")
    return 0


def _ask(prompt: str, stream: IO[str]) -> str | None:
    print(prompt, end="", flush=True)
    line = stream.readline()
    return None if line == "" else line.strip()


@_handled
async def run_enter(args: argparse.Namespace, settings: Settings) -> int:
    from suara.client.recap import load_paper, save_paper
    from suara.election.recap_sheet import PaperError, read_paper, warnings

    _, snapshot, _, paper_path = _sheet(args, settings)
    paper = load_paper(paper_path)
    for code in args.unit:
        if snapshot.unit(code) is None:
            raise Stop(f"--unit {code}: not a unit of area {snapshot.area} (`suara recap show` lists them)")
    if args.file is not None:
        try:
            read = read_paper(args.file.read_text(), snapshot)
        except OSError as exc:
            raise Stop(f"cannot read {args.file}: {exc}") from exc
        except (PaperError, ValueError) as exc:
            problems = exc.problems if isinstance(exc, PaperError) else [str(exc)]
            lines = "\n".join(f"  - {p}" for p in problems)
            raise Stop(f"{args.file}: nothing entered; {len(problems)} problem(s):\n{lines}") from exc
        if args.unit:
            read = {c: v for c, v in read.items() if c in args.unit}
        paper.update(read)
        save_paper(paper_path, snapshot, paper)
        for code, entered in read.items():
            for said in warnings(entered, snapshot.choices):
                print(f"  note {code}: {said}")
        print(f"entered {len(read)} unit(s) from {args.file}; {len(paper)} of {len(snapshot.units)} entered")
        return 0
    todo = [u for u in snapshot.units if (u.code in args.unit if args.unit else u.code not in paper)]
    if not todo:
        print(f"every unit is entered ({len(paper)}); to change one: suara recap enter --key {args.key} --unit KODE")
        return 0
    print(f"{len(todo)} unit(s) to enter. Answer y if the paper says the same as the digital form, n to type")
    print("each number, s to skip this unit, q to stop (what is entered is kept).")
    stream = sys.stdin
    for unit in todo:
        counts: dict[str, int] | None = await asyncio.to_thread(_enter_unit, unit, snapshot, stream)
        if counts is None:
            break
        if not counts:
            continue
        paper[unit.code] = counts
        save_paper(paper_path, snapshot, paper)  # each unit on disk as soon as it is entered
        for said in warnings(counts, snapshot.choices):
            print(f"  note: {said}; check the paper again if this was not what was read out")
    print(f"{len(paper)} of {len(snapshot.units)} units entered")
    return 0


def _enter_unit(unit: Any, snapshot: Any, stream: IO[str]) -> dict[str, int] | None:
    """A unit's numbers from the official: {} to skip it, None to stop."""
    from suara.election.recap_sheet import parse_count

    names = _labels(snapshot)
    print(f"\n{unit.code} {unit.name}")
    if unit.digital is not None:
        for name in snapshot.fields:
            print(f"  {names[name]:<45} {unit.digital.get(name, 0):>10,}")
    else:
        print("  no counted digital form: type the paper's numbers")
    while True:
        if unit.digital is None:
            answer = _ask("type the paper's numbers now? [y/s/q] ", stream)
            typing = "y"
        else:
            answer = _ask("paper the same? [y/n/s/q] ", stream)
            typing = "n"
        answer = None if answer is None else answer.lower()
        if answer in (None, "q"):
            return None
        if answer == "s":
            return {}
        if answer == typing:
            break
        if answer == "y" and unit.digital is not None:
            return dict(unit.digital)
        print("  please answer " + ("y, n, s or q" if unit.digital is not None else "y, s or q"))
    counts: dict[str, int] = {}
    for name in snapshot.fields:
        while True:
            typed = _ask(f"  {names[name]}: ", stream)
            if typed is None:
                return None
            try:
                counts[name] = parse_count(typed)
                break
            except ValueError as exc:
                print(f"  {names[name]} ({name}): {exc}; type the number as written on the paper")
    return counts


@_handled
async def run_template(args: argparse.Namespace, settings: Settings) -> int:
    import csv

    _, snapshot, _, _ = _sheet(args, settings)
    columns = ["kode", "nama", *(c.id for c in snapshot.choices), *snapshot.fields[len(snapshot.choices) :]]
    with args.out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for unit in snapshot.units:
            writer.writerow([unit.code, unit.name, *[""] * (len(columns) - 2)])
    choices = ", ".join(f"{c.id} = {c.number}. {c.name}" for c in snapshot.choices)
    print(f"wrote {args.out}: {len(snapshot.units)} units; choice columns: {choices}")
    return 0


def _recap_client(args: argparse.Namespace, settings: Settings, tls: Any) -> Any:
    from suara.client.recap import RecapClient

    target = args.target or f"{settings.aggregate.host}:{settings.aggregate.port}"
    path = _dir(args, settings) / "outbox.sqlite3"
    return RecapClient.open(path, target, tls=tls, call_timeout_s=args.timeout)


@_handled
async def run_sign(args: argparse.Namespace, settings: Settings) -> int:
    from suara.client.outbox import OutboxConflict
    from suara.client.recap import load_paper, recap_of
    from suara.election.recap_sheet import compile_sheet

    key, snapshot, _, paper_path = _sheet(args, settings)
    comparison = compile_sheet(snapshot, load_paper(paper_path))
    if comparison.recap is None:
        missing = comparison.missing_paper
        listed = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise Stop(
            f"nothing signed: {len(missing)} unit(s) have no paper numbers yet ({listed}); "
            f"enter them with `suara recap enter --key {args.key} --contest {args.contest}`"
        )
    from suara.runtime.settings import SettingError

    # Signing needs no network settings: a laptop without them still signs and keeps the recap.
    unsendable = "--offline" if args.offline else None
    tls = None
    if unsendable is None:
        try:
            tls = tls_of(args, settings)
        except SettingError as exc:
            unsendable = str(exc)
    async with await _recap_client(args, settings, tls) as client:
        try:
            entry, put = await client.store_recap(key, args.contest, comparison.recap, snapshot)
        except OutboxConflict as exc:
            raise Stop(f"nothing signed: {exc}") from exc
        said = {"new": "signed and saved in the outbox", "exists": "already signed", "requeued": "queued again"}[put]
        print(f"{entry.describe()} {said} ({len(comparison.differences)} unit(s) differ from the digital count)")
        if entry.state == "sent":
            print(f"already sent: {entry.outcome}, recap id {entry.receipt.submission_id if entry.receipt else '-'}")
            return 0
        if unsendable is not None:
            print(f"not sent ({unsendable}); it is safe in the outbox. Send it with: suara recap send")
            return EXIT_PENDING
        attempt = await client.send(entry)
    return _report_one(attempt.entry, recap_of(attempt.entry).version)


def _report_one(entry: Any, version: int) -> int:
    if entry.state == "sent":
        print(f"sent {entry.describe()}: {entry.outcome}, recap id {entry.receipt.submission_id}")
        if entry.outcome == "SUPERSEDED":
            print(f"  aggregate already holds version {entry.current_version}: sign again to correct above it")
        return 0
    if entry.state == "rejected":
        print(f"REFUSED {entry.describe()}: {entry.last_code}: {entry.last_error}")
        return EXIT_REJECTED
    print(f"not sent yet ({entry.last_error}); it is safe in the outbox. Send it with: suara recap send")
    return EXIT_PENDING


@_handled
async def run_send(args: argparse.Namespace, settings: Settings) -> int:
    from suara.client.sdk import Progress

    def progress(p: Progress) -> None:
        if p.waiting_s:
            print(f"waiting {p.pending}; retrying in {p.waiting_s:.1f} s ({p.last_error})", file=sys.stderr, flush=True)

    async with await _recap_client(args, settings, tls_of(args, settings)) as client:
        if not await client.outbox.pending():
            print("nothing waiting: every signed recap has been answered by aggregate")
            return 0
        report = await client.flush(deadline_s=args.deadline, on_progress=progress)
    for e in report.sent:
        print(f"sent {e.describe()}: {e.outcome}, recap id {e.receipt.submission_id if e.receipt else '-'}")
    for e in report.rejected:
        print(f"REFUSED {e.describe()}: {e.last_code}: {e.last_error}")
    if report.pending:
        print(f"{len(report.pending)} recap(s) still waiting ({report.pending[0].last_error}); safe in the outbox")
        return EXIT_PENDING
    return EXIT_REJECTED if report.rejected else 0


@_handled
async def run_status(args: argparse.Namespace, settings: Settings) -> int:
    from suara.client.outbox import Outbox

    key = _key(args)
    path = _dir(args, settings) / "outbox.sqlite3"
    entries = []
    if path.exists():
        async with await Outbox.open(path, "recap") as outbox:
            entries = [e for e in await outbox.entries() if e.tps == key.area and e.contest == args.contest]
    result: dict[str, Any] = {"area": key.area, "contest": args.contest, "outbox": [entry_json(e) for e in entries]}
    if args.site:
        result["site"] = _site_status(args.site, args.contest, key.area)
    if args.reader_target:
        if args.credential is None:
            raise Stop("--reader-target needs --credential (a reader client certificate, PEM with its key)")
        result["aggregate"] = await _aggregate_status(args, settings, key.area)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"recap of area {key.area} {args.contest}")
    if not entries:
        print("  nothing signed here yet")
    for e in entries:
        receipt = f", recap id {e.receipt.submission_id}" if e.receipt else ""
        why = f": {e.last_code}: {e.last_error}" if e.last_error else ""
        print(f"  v{e.version} {e.state}{' ' + e.outcome if e.outcome else ''}{receipt}{why}")
    sent = max((e.version for e in entries if e.state == "sent" and e.outcome != "SUPERSEDED"), default=0)
    for where in ("site", "aggregate"):
        if where in result:
            _print_reconciliation(where, result[where])
            shown = result[where].get("recap_version") or 0
            if "error" not in result[where] and shown < sent:
                print(f"    (v{sent} was sent but {where} shows v{shown} yet: the site is rewritten every few seconds)")
    return 0


def _site_status(site: str, contest: str, area: str) -> dict[str, Any]:
    from suara.site import paths
    from suara.site.audit import SiteUnreadable, site_reader

    try:
        read = site_reader(site)
        status, pointer = read(paths.status_path(contest, area)), read(paths.POINTER)
    except SiteUnreadable as exc:
        return {"error": str(exc)}
    if not isinstance(status, dict):
        return {"error": f"the site has no status file for area {area}"}
    reconciliation = dict(status.get("reconciliation") or {})
    reconciliation["site_snapshot"] = pointer.get("snapshot") if isinstance(pointer, dict) else None
    return reconciliation


async def _aggregate_status(args: argparse.Namespace, settings: Settings, area: str) -> dict[str, Any]:
    import grpc

    from suara.client.aggregate_stub import aggregate_stub
    from suara.v1 import aggregate_pb2

    async with _reader_channel(args, settings) as channel:
        stub = aggregate_stub(channel)
        try:
            got = await stub.GetReconciliation(
                aggregate_pb2.GetReconciliationRequest(area=area, contest=args.contest), timeout=10
            )
            listed = await stub.ListMismatches(
                aggregate_pb2.ListMismatchesRequest(area=area, contest=args.contest, include_incomplete=True),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            return {"error": f"{exc.code().name}: {exc.details()}"}
    r = got.reconciliation
    return {
        "status": aggregate_pb2.ReconciliationStatus.Name(r.status).removeprefix("RECONCILIATION_STATUS_"),
        "recap_version": r.recap_version,
        "tps_reported": r.tps_reported,
        "tps_total": r.tps_total,
        "differences": [
            {"field": d.field, "recap": d.recap, "digital": d.digital, "difference": d.difference}
            for d in r.differences
        ],
        "mismatches_under": [i.area for i in listed.items],
    }


_MEANING = {
    "MATCH": "the recap equals the digital count, and every TPS is counted",
    "MISMATCH": "every TPS is counted and the recap differs",
    "INCOMPLETE": "TPS are still missing or quarantined digitally, so a difference may still close",
    "NO_RECAP": "no recap has reached aggregate yet",
}


def _print_reconciliation(where: str, r: dict[str, Any]) -> None:
    if "error" in r:
        print(f"  {where}: cannot tell ({r['error']})")
        return
    status = r.get("status", "?")
    at = f" (site snapshot {r['site_snapshot']})" if r.get("site_snapshot") is not None else ""
    print(f"  {where}{at}: {status}, recap v{r.get('recap_version', 0)}: {_MEANING.get(status, '')}")
    for d in r.get("differences", []):
        print(f"    {d['field']}: recap {d['recap']:,}, digital {d['digital']:,} ({d['difference']:+,})")
