"""`suara loadtest`: drive a running suara like election night, then check every published number.

It reads the registry from the published site (--site: a directory or an http(s) URL), enrolls one
virtual KPPS device per sampled TPS through tally's admin API, and has each submit its C.Hasil forms
through the client SDK on a time-compressed election-night curve: few at first, a peak, a long tail.
Closed loop (default): --concurrency devices at once, as fast as tally answers. Open loop (--rate R):
R arrivals per second on average, whatever tally's pace (the peak is ~2.5 × R).

--faults standard (default) adds, at a few percent each: duplicate sends, retries after lost replies,
corrections (version + 1), stale versions (SUPERSEDED), inconsistent forms (QUARANTINED) corrected
later, malformed forms (INVALID_ARGUMENT) and devices offline for a while (their outbox is flushed
when they are back).

At the end: a table, and the JSON report (--report) with throughput, latency, outcomes, errors,
freshness (acknowledged → visible in the published national file) and the verification of every
published totals file of the sampled contests, at every level, and every sampled TPS's file, against
the load test's own oracle of what tally acknowledged, and of the chain heads the site carries (the
checks of `suara audit site`). The election must be fresh (no forms yet).

The whole run is one address to tally, which limits calls per address (SUARA_TALLY_PEER_RATE a
second per tally process, 5,000 by default): a run faster than that per process needs a tally
started with a higher SUARA_TALLY_PEER_RATE, or its devices wait out RESOURCE_EXHAUSTED hints. Each
virtual device sends a few forms, far below the per-device limit. The devices sign the election id
tally's enrollment replies name.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cli.outbox import add_tls_arguments, tls_of
from suara.runtime.settings import Settings

EXIT_MISMATCH = 1
EXIT_ERROR = 2


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "loadtest",
        help="drive a running suara like election night and verify the published site",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "exit status: 0 the site is exact; 1 a published number differs from the oracle, or a published\n"
            "chain head is unsigned, badly signed or lower than an earlier one; 2 the run failed."
        ),
    )
    p.add_argument(
        "--target", metavar="HOST:PORT", help="tally's public address (default: SUARA_TALLY_HOST:SUARA_TALLY_PORT)"
    )
    p.add_argument(
        "--admin-target",
        metavar="HOST:PORT",
        help="tally's internal address, where the admin enrolls the devices (default: SUARA_TALLY_ADDRESS)",
    )
    p.add_argument(
        "--admin-key",
        type=Path,
        metavar="PATH",
        help="the admin's certificate and key, one PEM file (with --insecure: a `suara admin init` file); "
        "default: SUARA_DATA_DIR/admin.pem (admin.key.json with --insecure)",
    )
    add_tls_arguments(p, "tally's")
    p.add_argument(
        "--site",
        metavar="DIR-or-URL",
        help="the published site: a directory or an http(s) URL (default: SUARA_SITE_DIR)",
    )
    p.add_argument(
        "--scale", type=float, default=1.0, metavar="F", help="fraction of the TPS that report (default 1.0: all)"
    )
    p.add_argument(
        "--contests", metavar="C,C,…", help="comma-separated contest ids (default: every contest the site lists)"
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=256,
        metavar="N",
        help="devices sending at once; open loop: at most (default 256)",
    )
    p.add_argument("--rate", type=float, metavar="R", help="open loop: mean arrivals per second (default: closed loop)")
    p.add_argument(
        "--faults", choices=("standard", "none"), default="standard", help="faults to inject (default standard)"
    )
    p.add_argument(
        "--seed", type=int, default=2024, metavar="N", help="seed of the sample, the plan and the forms (default 2024)"
    )
    p.add_argument(
        "--photos",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of the TPS whose forms carry the three photos of the paper form, drawn from its numbers "
        "(about 0.13 s of CPU and 1 MB per form; default 0)",
    )
    p.add_argument("--report", type=Path, metavar="PATH", help="write the JSON report here")
    p.add_argument(
        "--settle-timeout",
        type=float,
        default=900.0,
        metavar="S",
        help="most seconds to wait for publish's first snapshot, then for each next one as the site catches up (900)",
    )
    p.set_defaults(handler=run)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    from cli.progress import Progress
    from loadtest.config import Config
    from loadtest.errors import LoadTestError
    from loadtest.report import human_table, write_report
    from loadtest.run import run_loadtest
    from suara.runtime.auth.admin import AdminCredential
    from suara.runtime.auth.certificate import CertCredential

    device_tls = tls_of(args, settings)
    insecure = device_tls is None
    admin_path = args.admin_key or settings.data_dir / ("admin.key.json" if insecure else "admin.pem")
    token, admin_tls = "", None
    try:
        if insecure:
            token = AdminCredential.load(admin_path).token
        else:
            admin_tls = tls_of(args, settings, CertCredential.load(admin_path).key_pair)
    except (OSError, ValueError, KeyError) as exc:
        print(f"suara loadtest: cannot read the admin credential {admin_path}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    config = Config(
        target=args.target or f"{settings.tally.host}:{settings.tally.port}",
        admin_target=args.admin_target or settings.peers.tally,
        tls=device_tls,
        admin_tls=admin_tls,
        admin_token=token,
        site=args.site or str(settings.site.dir),
        scale=args.scale,
        contests=[c.strip() for c in args.contests.split(",") if c.strip()] if args.contests else None,
        concurrency=args.concurrency,
        rate=args.rate,
        faults=args.faults,
        seed=args.seed,
        photos=args.photos,
        snapshot_timeout_s=args.settle_timeout,  # a whole country's first cycle takes minutes
        settle_timeout_s=args.settle_timeout,
        progress=Progress,
    )
    try:
        report = await run_loadtest(config)
    except (LoadTestError, ValueError) as exc:
        print(f"suara loadtest: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.report is not None:
        write_report(report, args.report)
    print(human_table(report))
    return 0 if report["verification"]["exact"] else EXIT_MISMATCH
