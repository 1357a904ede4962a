"""The end of a run: the JSON report (`--report`) and the human table."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.freshness import Freshness, percentile
from loadtest.verify import Verification


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
    config: dict[str, Any],
    registry: dict[str, Any],
    devices: dict[str, Any],
    plan: dict[str, Any],
    stats: Stats,
    run_s: float,
    fresh: Freshness,
    verification: Verification,
    phases_s: dict[str, float],
) -> dict[str, Any]:
    seconds = sorted(fresh.seconds)
    return {
        "config": config,
        "registry": registry,
        "devices": devices,
        "plan": plan,
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
    }


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
        ("verification", "EXACT" if v["exact"] else "MISMATCH"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {val}" for k, val in rows]
    for m in v["mismatches"][:10]:
        lines.append(f"  ✗ {m['path']} {m['field']}: published {m['got']!r}, expected {m['want']!r}")
    return "\n".join(lines)
