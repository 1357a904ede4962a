"""The end of a run: what the devices saw (`Stats`), the JSON report (`--report`) and the human table."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.config import Config
from loadtest.devices import Enrollment
from loadtest.freshness import Freshness, percentile
from loadtest.oracle import Oracle
from loadtest.plan import Plan
from loadtest.registry import Registry
from loadtest.verify import Mismatch, Verification


@dataclass
class Stats:
    """What the devices saw: every attempt's latency, tally's outcomes, the gRPC errors."""

    latencies_ms: list[float] = field(default_factory=list)
    schedule_lag_ms: list[float] = field(default_factory=list)  # open loop: started late by this much
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    submissions: int = 0  # answered calls (outcome or error), SubmitBatch items included
    unexpected: list[dict[str, Any]] = field(default_factory=list)  # tally's answer contradicts the form's intent
    acks: dict[str, list[tuple[float, int]]] = field(default_factory=dict)  # contest -> (monotonic s, counted TPS)


def _ms(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    return {f"p{q}": None if (v := percentile(ordered, q)) is None else round(v, 2) for q in (50, 95, 99)} | {
        "max": round(ordered[-1], 2) if ordered else None
    }


def build_report(
    *,
    config: Config,
    contests: list[str],
    registry: Registry,
    enrollment: Enrollment,
    plan: Plan,
    stats: Stats,
    oracle: Oracle,
    run_s: float,
    fresh: Freshness,
    verification: Verification,
    settled: bool,
    phases_s: dict[str, float],
) -> dict[str, Any]:
    """The report of a run (its keys are read by tests and bench/end_to_end.py: keep them)."""
    _add_unexpected(verification, stats, settled, oracle, contests)
    seconds = sorted(fresh.seconds)
    return {
        "config": {
            "target": config.target,
            "site": config.site,
            "scale": config.scale,
            "contests": contests,
            "concurrency": config.concurrency,
            "rate": config.rate,
            "faults": config.faults,
            "seed": config.seed,
            "mode": config.mode(),
        },
        "registry": {
            c: {"tps": len(r.tps()), "areas": len(r.children), "choices": len(r.choices)}
            for c, r in registry.contests.items()
        },
        "devices": {
            "enrolled": len(enrollment.keys),
            "keygen_s": round(enrollment.keygen_s, 3),
            "enroll_s": round(enrollment.enroll_s, 3),
            "enroll_per_s": round(len(enrollment.keys) / max(enrollment.enroll_s, 1e-9), 1),
            "enroll_retries": dict(enrollment.retries),
        },
        "plan": {
            "stations": plan.stations,
            "jobs": len(plan.jobs),
            "forms": plan.forms(),
            "faults": dict(sorted(plan.faults.items())),
        },
        "duration_s": round(run_s, 3),
        "phases_s": {k: round(v, 3) for k, v in phases_s.items()},
        "throughput": {
            "submissions": stats.submissions,
            "submissions_per_s": round(stats.submissions / run_s, 1) if run_s > 0 else None,
        },
        "latency_ms": _ms(stats.latencies_ms),
        "schedule_lag_ms": _ms(stats.schedule_lag_ms) if stats.schedule_lag_ms else None,
        "outcomes": dict(sorted(stats.outcomes.items())),
        "errors": dict(sorted(stats.errors.items())),
        "freshness_s": {
            "p50": None if (p := percentile(seconds, 50)) is None else round(p, 3),
            "p99": None if (p := percentile(seconds, 99)) is None else round(p, 3),
            "max": round(seconds[-1], 3) if seconds else None,
            "measured": len(seconds),
            "unseen": fresh.unseen,
        },
        "verification": verification.to_json(),
        "settled": settled,
        "oracle": {c: {"counted": oracle.counted(c)} for c in contests},
    }


def _add_unexpected(
    verification: Verification, stats: Stats, settled: bool, oracle: Oracle, contests: list[str]
) -> None:
    """Answers that contradict the forms' intent, and a site that never caught up, are mismatches too."""
    extra = [
        Mismatch(f"tally:{u['tps']}/{u['contest']}/v{u['version']}", "outcome", u["got"], _intended(u["variant"]))
        for u in stats.unexpected
    ]
    if not settled:
        extra.append(Mismatch("suara/snapshot.json", "settled", False, {c: oracle.counted(c) for c in contests}))
    if extra:
        verification.exact = False
        verification.mismatch_count += len(extra)
        verification.mismatches = (extra + verification.mismatches)[: max(len(verification.mismatches), 50)]


def _intended(variant: str) -> str:
    return {"ok": "ACCEPTED", "inconsistent": "QUARANTINED", "malformed": "INVALID_ARGUMENT"}[variant]


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    tmp.replace(path)


def human_table(report: dict[str, Any]) -> str:
    def show(value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:,.2f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    v = report["verification"]
    rows: list[tuple[str, str]] = [
        ("target", report["config"]["target"]),
        ("mode", report["config"]["mode"]),
        ("TPS sampled / devices", f"{show(report['devices']['enrolled'])}"),
        ("forms planned", show(report["plan"]["forms"])),
        ("run", f"{show(report['duration_s'])} s"),
        ("submissions", show(report["throughput"]["submissions"])),
        ("throughput", f"{show(report['throughput']['submissions_per_s'])} /s"),
        ("latency p50 / p95 / p99", " / ".join(show(report["latency_ms"][k]) for k in ("p50", "p95", "p99")) + " ms"),
        ("freshness p50 / p99", " / ".join(show(report["freshness_s"][k]) for k in ("p50", "p99")) + " s"),
        ("outcomes", ", ".join(f"{k} {show(n)}" for k, n in report["outcomes"].items()) or "–"),
        ("errors", ", ".join(f"{k} {show(n)}" for k, n in report["errors"].items()) or "–"),
        ("areas / TPS files checked", f"{show(v['areas_checked'])} / {show(v['tps_checked'])}"),
        ("mismatches", show(v["mismatch_count"])),
        ("chain heads (audit site)", f"{show(v['chain_heads'])} signed, {len(v['chain_problems'])} problem(s)"),
        ("verification", "EXACT" if v["exact"] else "MISMATCH"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {val}" for k, val in rows]
    for m in v["mismatches"][:10]:
        lines.append(f"  ✗ {m['path']} {m['field']}: published {m['got']!r}, expected {m['want']!r}")
    for problem in v["chain_problems"][:10]:
        lines.append(f"  ✗ chain: {problem}")
    return "\n".join(lines)
