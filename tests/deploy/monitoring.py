"""What the deploy tests read: the metric contract (docs/metrics.md), the alert rules and their promtool
tests, the dashboard, and the metric names a PromQL expression selects."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

PROMTOOL_MISSING = "promtool is missing: install Debian's package prometheus (`make system-deps` does, as root)"

# Grafana's variables in a panel's query, each replaced by something PromQL accepts.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s", "$contest": ".*"}

# Prometheus' own series, and prometheus-client's default collectors: not in the contract, always there.
BUILTIN_NAMES = {"up", "ALERTS", "ALERTS_FOR_STATE"}
BUILTIN_PREFIXES = ("process_", "python_")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
_KEYWORDS |= {"inf", "nan", "atan2"}


def promtool_or_skip() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip(PROMTOOL_MISSING)
    return found


def contract(repo_root: Path) -> dict[str, str]:
    """Every metric docs/metrics.md lists (a list item that starts with the name, its labels, then its
    type), name -> counter | gauge | histogram."""
    text = (repo_root / "docs" / "metrics.md").read_text()
    return dict(re.findall(r"^- (suara_[a-z0-9_]+)(?:\{[^}]*\})?\s+(counter|gauge|histogram)\b", text, re.MULTILINE))


def metric_names(expr: str) -> set[str]:
    """The metric names `expr` selects. Strings, label matchers, ranges and the label lists of
    by/without/on/ignoring/group_* are cut away first; what remains that is not a function (a name
    before `(`), a keyword or part of a number or duration is a metric name."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def is_known(name: str, metrics: dict[str, str]) -> bool:
    """A series suara exports: a counter or gauge by its name, a histogram by its _bucket, _sum or
    _count series (the bare name of a histogram selects nothing)."""
    if name in BUILTIN_NAMES or name.startswith(BUILTIN_PREFIXES):
        return True
    if name in metrics:
        return metrics[name] != "histogram"
    stems = [name.removesuffix(suffix) for suffix in HISTOGRAM_SUFFIXES if name.endswith(suffix)]
    return any(metrics.get(stem) == "histogram" for stem in stems)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules(repo_root: Path) -> list[dict[str, Any]]:
    rules = []
    for path in sorted((repo_root / "deploy" / "prometheus" / "rules").glob("*.yml")):
        rules += [rule for group in load_yaml(path)["groups"] for rule in group["rules"] if "alert" in rule]
    return rules


def rule_tests(repo_root: Path) -> dict[Path, Any]:
    return {path: load_yaml(path) for path in sorted((repo_root / "deploy" / "prometheus" / "tests").glob("*.yml"))}


def dashboard(repo_root: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((repo_root / "deploy" / "grafana" / "suara-election-night.json").read_text())
    return loaded


def dashboard_queries(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: its panels' targets and its variables' queries."""
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["definition"]
            inner = re.fullmatch(r"label_values\((?:(.+),\s*)?(\w+)\)", query)
            exprs.append(inner.group(1) if inner and inner.group(1) else query)
    return exprs
