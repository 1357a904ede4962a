"""deploy/prometheus: the rules pass `promtool check rules`, their unit tests (`promtool test rules`,
deploy/prometheus/tests) pass and show every alert firing and not firing, each alert says what to do
(its runbook entry exists), and prometheus.yml is a valid configuration with the targets that
file_sd.py writes from `suara up`'s up.json."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.monitoring import alert_rules, load_yaml, promtool_or_skip, rule_tests
from tests.support.waiting import within

JOBS = {"suara-tally", "suara-aggregate", "suara-publish"}


@pytest.fixture(scope="module")
def promtool() -> str:
    return promtool_or_skip()


def _run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def _seconds(duration: str) -> float:
    """A Prometheus / Go duration ("1h25m", "2m45s", "90s") in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def _cases(repo_root: Path) -> dict[str, dict[str, set[float]]]:
    """alertname -> {"firing": eval times, "quiet": eval times} over every promtool test file."""
    cases: dict[str, dict[str, set[float]]] = {}
    for _, suite in rule_tests(repo_root).items():
        for group in suite["tests"]:
            for case in group.get("alert_rule_test", []):
                kind = "firing" if case.get("exp_alerts") else "quiet"
                cases.setdefault(case["alertname"], {"firing": set(), "quiet": set()})[kind].add(
                    _seconds(case["eval_time"])
                )
    return cases


def test_the_rules_pass_promtool_check(promtool: str, repo_root: Path) -> None:
    rules = sorted(str(p) for p in (repo_root / "deploy" / "prometheus" / "rules").glob("*.yml"))
    done = _run(promtool, "check", "rules", "--lint=all", "--lint-fatal", *rules)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules(repo_root))} rules found" in done.stdout + done.stderr


def test_the_rule_unit_tests_pass(promtool: str, repo_root: Path) -> None:
    suites = sorted(str(p) for p in (repo_root / "deploy" / "prometheus" / "tests").glob("*.yml"))
    assert suites
    done = _run(promtool, "test", "rules", *suites)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_tested_firing_and_not_firing(repo_root: Path) -> None:
    alerts = {rule["alert"] for rule in alert_rules(repo_root)}
    cases = _cases(repo_root)
    assert set(cases) <= alerts, f"tests of alerts that do not exist: {set(cases) - alerts}"
    for alert in sorted(alerts):
        assert cases.get(alert, {}).get("firing"), f"{alert}: no case where it fires"
        assert cases.get(alert, {}).get("quiet"), f"{alert}: no case where it stays quiet"


def _mutated(repo_root: Path, tmp_path: Path, expr: str) -> Path:
    """deploy/prometheus copied with every alert's expression replaced by `expr` and no `for`."""
    copy = tmp_path / "prometheus"
    shutil.copytree(repo_root / "deploy" / "prometheus", copy)
    for path in (copy / "rules").glob("*.yml"):
        doc = load_yaml(path)
        for group in doc["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    rule["expr"] = expr
                    rule.pop("for", None)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return copy


def _failed_cases(promtool: str, copy: Path) -> set[tuple[str, float]]:
    done = _run(promtool, "test", "rules", *sorted(str(p) for p in (copy / "tests").glob("*.yml")))
    assert done.returncode != 0, "no test failed against rules that cannot be right"
    found = re.findall(r"alertname: (\w+), time: ([\dhms.]+),", done.stdout + done.stderr)
    return {(name, _seconds(at)) for name, at in found}


@pytest.mark.slow
def test_the_unit_tests_catch_an_alert_that_never_or_always_fires(
    promtool: str, repo_root: Path, tmp_path: Path
) -> None:
    """Not vacuous: against rules that never fire every firing case fails, against rules that always
    fire every quiet case fails."""
    cases = _cases(repo_root)
    never = _failed_cases(promtool, _mutated(repo_root, tmp_path / "never", "vector(1) == 0"))
    always = _failed_cases(promtool, _mutated(repo_root, tmp_path / "always", "vector(1)"))
    for alert, kinds in cases.items():
        for at in kinds["firing"]:
            assert (alert, at) in never, f"{alert} at {at}s passes although the alert never fires"
        for at in kinds["quiet"]:
            assert (alert, at) in always, f"{alert} at {at}s passes although the alert always fires"


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_says_how_bad_and_what_to_do(repo_root: Path) -> None:
    """A severity Alertmanager can route on, a summary and a description, and a runbook_url naming
    the alert's own entry in the runbook's alert section."""
    runbook = (repo_root / "docs" / "runbook.md").read_text()
    section = runbook.split("## Alerts: what each means and what to do", 1)
    assert len(section) == 2, "docs/runbook.md has no section 'Alerts: what each means and what to do'"
    entries = {_slug(h) for h in re.findall(r"^### (.+)$", section[1].split("\n## ", 1)[0], re.MULTILINE)}
    for rule in alert_rules(repo_root):
        name, annotations = rule["alert"], rule.get("annotations", {})
        assert rule.get("labels", {}).get("severity") in {"critical", "warning"}, name
        assert annotations.get("summary") and annotations.get("description"), name
        assert annotations.get("runbook_url") == f"docs/runbook.md#{name.lower()}", name
        assert name.lower() in entries, f"{name}: no entry '### {name}' in the runbook's alert section"
    assert len(entries) == len(alert_rules(repo_root)), "a runbook entry for an alert that does not exist"


def _sample_up(data_dir: Path) -> dict[str, Any]:
    """up.json as `suara up --tally-processes 2` writes it, with each process's metrics URL."""
    return {
        "pid": 100,
        "ca": str(data_dir / "pki" / "ca.crt"),
        "admin_key": str(data_dir / "admin.pem"),
        "database_url": "postgresql:///suara",
        "site": {"url": "http://127.0.0.1:8080/", "dir": str(data_dir / "site"), "pid": 101},
        "services": {
            "aggregate": [
                {"address": "127.0.0.1:50052", "internal": "127.0.0.1:50062", "pid": 102,
                 "metrics": "http://127.0.0.1:9102/metrics"},
            ],
            "tally": [
                {"address": "127.0.0.1:50051", "internal": "127.0.0.1:50061", "pid": 103,
                 "metrics": "http://127.0.0.1:9101/metrics"},
                {"address": "127.0.0.1:50051", "internal": "127.0.0.1:50061", "pid": 104,
                 "metrics": "http://127.0.0.1:9111/metrics"},
            ],
            "publish": [{"address": "127.0.0.1:50053", "pid": 105, "metrics": "https://127.0.0.1:9103/m"}],
        },
    }  # fmt: skip


def test_file_sd_turns_up_json_into_one_target_file_per_job(repo_root: Path, tmp_path: Path) -> None:
    up = tmp_path / "up.json"
    up.write_text(json.dumps(_sample_up(tmp_path)))
    out = tmp_path / "targets"
    script = repo_root / "deploy" / "prometheus" / "file_sd.py"
    done = _run(sys.executable, str(script), str(up), str(out))
    assert done.returncode == 0, done.stderr
    written = {p.name: json.loads(p.read_text()) for p in out.iterdir()}
    plain = {"__scheme__": "http", "__metrics_path__": "/metrics"}
    assert written == {
        "suara-aggregate.json": [{"targets": ["127.0.0.1:9102"], "labels": plain}],
        "suara-tally.json": [
            {"targets": ["127.0.0.1:9101"], "labels": plain},
            {"targets": ["127.0.0.1:9111"], "labels": plain},
        ],
        "suara-publish.json": [
            {"targets": ["127.0.0.1:9103"], "labels": {"__scheme__": "https", "__metrics_path__": "/m"}}
        ],
    }


def test_file_sd_without_up_json_fails_saying_so(repo_root: Path, tmp_path: Path) -> None:
    script = repo_root / "deploy" / "prometheus" / "file_sd.py"
    done = _run(sys.executable, str(script), str(tmp_path / "absent.json"), str(tmp_path / "targets"))
    assert done.returncode == 1
    assert "absent.json" in done.stderr


def test_the_configuration_scrapes_the_three_jobs_from_file_sd(promtool: str, repo_root: Path, tmp_path: Path) -> None:
    """The whole configuration (its rule files and the target files file_sd.py writes) is valid, with
    no warning, and names the three jobs docs/metrics.md names."""
    copy = tmp_path / "prometheus"
    shutil.copytree(repo_root / "deploy" / "prometheus", copy, ignore=shutil.ignore_patterns("targets"))
    up = tmp_path / "up.json"
    up.write_text(json.dumps(_sample_up(tmp_path)))
    assert _run(sys.executable, str(copy / "file_sd.py"), str(up), str(copy / "targets")).returncode == 0
    done = _run(promtool, "check", "config", "prometheus.yml", cwd=copy)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "WARNING" not in output, output
    config = load_yaml(copy / "prometheus.yml")
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == JOBS
    contract = (repo_root / "docs" / "metrics.md").read_text()
    for job in jobs:
        assert f'"{job}"' in contract, f"docs/metrics.md does not name the job {job}"


async def test_file_sd_follow_rewrites_the_targets_when_up_json_changes(repo_root: Path, tmp_path: Path) -> None:
    """`suara up` rewrites up.json when a child restarts on another port; a half-written up.json keeps
    the last good files."""
    up, out = tmp_path / "up.json", tmp_path / "targets"
    first = {"services": {"aggregate": [{"address": "127.0.0.1:1", "metrics": "http://127.0.0.1:9102/metrics"}]}}
    up.write_text(json.dumps(first))
    script = repo_root / "deploy" / "prometheus" / "file_sd.py"
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), str(up), str(out), "--follow", stderr=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    stderr = process.stderr

    def targets() -> list[str]:
        try:
            return [t for group in json.loads((out / "suara-aggregate.json").read_text()) for t in group["targets"]]
        except FileNotFoundError:
            return []

    async def said(start: str) -> str:
        """The next line file_sd.py writes that starts with `start`."""
        while not (line := (await stderr.readline()).decode()).startswith(start):
            assert line, f"file_sd.py --follow exited {await process.wait()}"
        return line

    try:
        await within(said("wrote"), "the first targets")
        assert targets() == ["127.0.0.1:9102"]
        up.write_text('{"services": {"aggregate": [')  # caught mid-write
        assert "the target files stay" in await within(said("note:"), "the broken up.json noticed")
        assert targets() == ["127.0.0.1:9102"]
        second = {"services": {"aggregate": [{"address": "127.0.0.1:1", "metrics": "http://127.0.0.1:9112/metrics"}]}}
        up.write_text(json.dumps(second))
        await within(said("wrote"), "the targets after up.json changed")
        assert targets() == ["127.0.0.1:9112"]
    finally:
        process.terminate()
        await process.wait()
