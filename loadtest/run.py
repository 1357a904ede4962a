"""One load-test run, phase by phase: publish's first snapshot, the registry from the site, devices, the
night (closed or open loop), the site settling, verification, and the report.

The driver (driver.py) sends the forms, settle.py waits on publish, verify.py checks the site against
the oracle, report.py assembles what the run found.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from typing import Any

from loadtest.config import PROFILES, Config, ProgressLine
from loadtest.devices import enroll
from loadtest.driver import Driver, drive, outbox_dir
from loadtest.errors import LoadTestError
from loadtest.freshness import Sampler, freshness
from loadtest.plan import make_plan, sample_tps
from loadtest.registry import read_contests_listed, read_registry
from loadtest.report import Stats, build_report
from loadtest.settle import settle, wait_for_snapshot
from loadtest.site import SiteError, open_site
from loadtest.verify import verify


class Phases:
    """The phases of a run, one after the other, each with its progress line and its wall seconds (the
    report's `phases_s`, which bench/end_to_end.py lays end to end from the run's start)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str, label: str, total: int | None = None) -> Iterator[ProgressLine]:
        started = time.monotonic()
        yield self.config.progress_line(label, total)
        self.seconds[name] = time.monotonic() - started


async def run_loadtest(config: Config) -> dict[str, Any]:
    """The whole run; the report (its `verification.exact` says whether the site was right)."""
    if config.faults not in PROFILES:
        raise LoadTestError(f"--faults must be one of {', '.join(PROFILES)}, got {config.faults!r}")
    phases = Phases(config)
    site = open_site(config.site)
    workdir = config.workdir or outbox_dir()
    try:
        with phases.phase("first_snapshot", "waiting for publish's first snapshot") as line:
            pointer = await wait_for_snapshot(site, config.snapshot_timeout_s)
            line.done(f"snapshot {pointer.get('snapshot')}")
        contests = config.contests or await read_contests_listed(site)
        for c in contests:
            shown = pointer.get("contests", {}).get(c, {})
            if shown.get("progres") or shown.get("quarantined"):
                raise LoadTestError(
                    f"the election already holds forms for {c} ({shown.get('progres')} counted, "
                    f"{shown.get('quarantined')} quarantined): the load test's oracle needs a fresh election"
                )
        with phases.phase("registry", "reading the registry") as line:
            registry = await read_registry(
                site, contests, concurrency=config.read_concurrency, on_progress=lambda n: line.update(n, note="files")
            )
            line.done(
                ", ".join(
                    f"{c}: {len(r.tps()):,} TPS in {len(r.children):,} areas" for c, r in registry.contests.items()
                )
            )
        held_all = registry.held()
        sampled = sample_tps(list(held_all), config.scale, config.seed)
        held = {tps: held_all[tps] for tps in sampled}
        plan = make_plan(held, PROFILES[config.faults], config.seed)

        with phases.phase("devices", "enrolling devices", len(sampled)) as line:
            enrollment = await enroll(
                config.admin_target or config.target, config.admin_token, sampled, tls=config.admin_tls,
                concurrency=config.enroll_concurrency, on_progress=line.update,
            )  # fmt: skip
            line.done(
                f"{len(enrollment.keys):,} devices (keys {enrollment.keygen_s:.1f} s, "
                f"enroll {enrollment.enroll_s:.1f} s)"
            )

        stats = Stats()
        driver = Driver(config, registry, enrollment.keys, workdir, stats)
        sampler = Sampler(site, contests, config.sample_interval_s)
        sampler.start()
        try:
            with phases.phase("night", "election night", len(plan.jobs)) as line:
                run_s = await drive(driver, plan, config, line)
                line.done(f"{stats.submissions:,} submissions in {run_s:.1f} s")
            with phases.phase("settle", "waiting for the site to catch up (TPS shown)") as line:
                settled = await settle(site, driver.oracle, contests, config, line)
                line.done(
                    "caught up" if settled else f"no new snapshot for {config.settle_timeout_s:g} s: publish stalled"
                )
            await sampler.sample_once()  # the state verification is about to read, for freshness too
        finally:
            await sampler.stop()
            await driver.close()

        by_contest: dict[str, list[str]] = {}
        for tps, cs in held.items():
            for c in cs:
                by_contest.setdefault(c, []).append(tps)
        total_files = sum(len(r.children) for r in registry.contests.values()) + sum(map(len, by_contest.values()))
        with phases.phase("verify", "verifying the site", total_files) as line:
            verification = await verify(
                site,
                registry.contests.values(),
                driver.oracle,
                config.seed,
                by_contest,
                concurrency=config.read_concurrency,
                recheck_rounds=config.recheck_rounds,
                recheck_wait_s=config.settle_s,
                on_progress=line.update,
            )
            line.done(f"{verification.areas_checked + verification.tps_checked:,} files")
        return build_report(
            config=config,
            contests=contests,
            registry=registry,
            enrollment=enrollment,
            plan=plan,
            stats=stats,
            oracle=driver.oracle,
            run_s=run_s,
            fresh=freshness(stats.acks, sampler.samples),
            verification=verification,
            settled=settled,
            phases_s=phases.seconds,
        )
    except SiteError as exc:
        raise LoadTestError(str(exc)) from exc
    finally:
        await site.close()
        if config.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
