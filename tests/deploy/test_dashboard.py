"""deploy/grafana's dashboard is a well-formed Grafana dashboard over a data source variable, and every
metric it and the alert rules query is one docs/metrics.md lists: the contract, the rules and the
dashboard stay in step."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.monitoring import (
    GRAFANA_VARIABLES,
    alert_rules,
    contract,
    dashboard,
    dashboard_queries,
    is_known,
    metric_names,
    promtool_or_skip,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# What an operator must find on the dashboard (issue 16's list), by the metric that shows it.
MUST_SHOW = {
    "suara_tally_forms_total": "forms per second by outcome",
    "suara_tally_refusals_total": "refusals by reason",
    "suara_grpc_server_handled_total": "RPC rate and error rate by service and method",
    "suara_grpc_server_handling_seconds_bucket": "RPC latency by service and method",
    "suara_relay_outbox_rows": "relay outbox depth",
    "suara_relay_outbox_oldest_age_seconds": "relay oldest row",
    "suara_aggregate_apply_duration_seconds_bucket": "aggregate apply latency",
    "suara_aggregate_updates_total": "aggregate updates by outcome",
    "suara_publish_lag_seconds": "publish lag",
    "suara_publish_snapshot_age_seconds": "snapshot age",
    "suara_db_pool_connections": "database pool",
    "suara_db_pool_waiting": "database pool waiting",
    "process_cpu_seconds_total": "CPU per process",
    "process_resident_memory_bytes": "memory per process",
    "ALERTS": "firing alerts",
}


def test_metric_names_reads_only_the_metrics_of_an_expression() -> None:
    """The extractor the checks below rest on: functions, labels, keywords, durations and Grafana's
    variables are not metric names."""
    expr = (
        "histogram_quantile(0.99, sum by (service, le) "
        '(rate(a_seconds_bucket{code!="OK",x=~"$contest"}[$__rate_interval])))'
        " / on(job) group_left(instance) b_total offset 10m or vector(0) and time() - c unless bool d > 1e3"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c", "d"}


def test_the_contract_lists_the_metrics_with_their_types(repo_root: Path) -> None:
    metrics = contract(repo_root)
    items = re.findall(r"^- (suara_\w+)", (repo_root / "docs" / "metrics.md").read_text(), re.MULTILINE)
    assert sorted(metrics) == sorted(items), "a list item of docs/metrics.md without its type"
    assert len(metrics) > 25, metrics
    assert metrics["suara_tally_forms_total"] == "counter"
    assert metrics["suara_publish_lag_seconds"] == "gauge"
    assert metrics["suara_grpc_server_handling_seconds"] == "histogram"


def test_is_known_takes_a_histogram_by_its_series_only(repo_root: Path) -> None:
    metrics = contract(repo_root)
    assert is_known("suara_tally_commit_duration_seconds_bucket", metrics)
    assert is_known("suara_tally_commit_duration_seconds_count", metrics)
    assert not is_known("suara_tally_commit_duration_seconds", metrics)  # a histogram's bare name
    assert not is_known("suara_tally_forms_total_bucket", metrics)  # a counter has no buckets
    assert not is_known("suara_tally_form_total", metrics)
    assert is_known("process_open_fds", metrics) and is_known("python_gc_objects_collected_total", metrics)
    assert is_known("up", metrics) and is_known("ALERTS", metrics)


def test_every_metric_the_alert_rules_query_is_in_the_contract(repo_root: Path) -> None:
    metrics = contract(repo_root)
    used: set[str] = set()
    for rule in alert_rules(repo_root):
        names = metric_names(rule["expr"])
        unknown = {n for n in names if not is_known(n, metrics)}
        assert not unknown, f"{rule['alert']} queries {unknown}, which docs/metrics.md does not list"
        used |= names
    assert len(used) > 10, used


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def test_every_metric_the_dashboard_queries_is_in_the_contract(repo_root: Path) -> None:
    metrics = contract(repo_root)
    used: set[str] = set()
    for expr in dashboard_queries(dashboard(repo_root)):
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        unknown = {n for n in names if not is_known(n, metrics)}
        assert not unknown, f"the dashboard queries {unknown} ({expr!r}), which docs/metrics.md does not list"
        used |= names
    missing = {f"{name} ({what})" for name, what in MUST_SHOW.items() if name not in used}
    assert not missing, f"the dashboard does not show: {sorted(missing)}"


def test_the_dashboard_is_well_formed(repo_root: Path) -> None:
    board = dashboard(repo_root)
    assert board["uid"] and board["title"]
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: dict[tuple[int, int], str] = {}
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
    for panel in _panels(board):
        assert panel["datasource"] == DATASOURCE, f"{panel['title']}: data source is not the variable"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
    used_variables = {m for e in dashboard_queries(board) for m in re.findall(r"\$(\w+)", e)}
    assert used_variables <= set(variables) | {v.lstrip("$") for v in GRAFANA_VARIABLES}, used_variables


def test_every_dashboard_query_is_valid_promql(repo_root: Path, tmp_path: Path) -> None:
    """promtool parses each query (as a recording rule), Grafana's variables replaced by values."""
    promtool = promtool_or_skip()
    exprs = dashboard_queries(dashboard(repo_root))
    for variable, value in GRAFANA_VARIABLES.items():
        exprs = [e.replace(variable, value) for e in exprs]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"q{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("bad", ["rate(suara_tally_form_total[5m])", "suara_relay_outbox_depth"])
def test_a_name_outside_the_contract_is_caught(repo_root: Path, bad: str) -> None:
    """Not vacuous: a misspelt or invented name fails the check."""
    metrics = contract(repo_root)
    assert any(not is_known(n, metrics) for n in metric_names(bad))
