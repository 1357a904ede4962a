"""`suara up`'s metrics as Prometheus sees them: every documented metric on every process's own URL,
and a real Prometheus scraping a load test whose own report is the oracle.

docs/metrics.md is the contract (the alert rules and the dashboard query those names); these tests
read it rather than repeat it, so a metric documented and not exported, or exported under other
labels, fails here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cli.embedded import free_port
from tests.cli.test_up import FREE_PORTS, Up, suara_up
from tests.support.processes import SUARA, suara_env
from tests.support.waiting import poll_until, within

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
PROMETHEUS = Path("/usr/bin/prometheus")
SERVICES = ("tally", "aggregate", "publish")
LOADTEST_TIMEOUT_S = 600.0  # a small night: the first full publish cycle, the forms, then verification
SCRAPE_S = 1  # Prometheus's scrape interval here
_LINE = re.compile(r"^- (suara_[a-z_]+)(?:\{([a-z_,]*)\})?\s+(counter|gauge|histogram)\b")


def documented() -> dict[str, tuple[str, frozenset[str], set[str]]]:
    """name → (kind, labels, services that export it), from docs/metrics.md."""
    out: dict[str, tuple[str, frozenset[str], set[str]]] = {}
    section: set[str] = set(SERVICES)
    previous = ""
    for line in DOC.read_text().splitlines():
        if line and not previous and not line.startswith(("-", " ")):  # a paragraph's first line: its heading
            head = line.split("(")[0].split(":")[0].strip()
            section = {head} if head in SERVICES else {"tally"} if head == "relay" else set(SERVICES)
        previous = line
        match = _LINE.match(line)
        if match:
            name, labels, kind = match.groups()
            services = set(SERVICES) if "every service" in line else section
            out[name] = (kind, frozenset(filter(None, (labels or "").split(","))), services)
    return out


async def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name → its (labels, value)s, as Prometheus's own text parser reads the page."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200, url
        text = await response.text()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def processes(up: Up) -> list[tuple[str, dict[str, Any]]]:
    return [(service, entry) for service, entries in up.state()["services"].items() for entry in entries]


def test_the_contract_is_read() -> None:
    """The parser above finds what the document lists, so the tests below check something."""
    names = documented()
    assert len(names) >= 25
    assert names["suara_tally_forms_total"] == ("counter", frozenset({"contest", "outcome"}), {"tally"})
    assert names["suara_relay_outbox_rows"][2] == {"tally"}
    assert names["suara_serving"][2] == set(SERVICES)
    assert names["suara_db_pool_waiting"] == ("gauge", frozenset({"service"}), set(SERVICES))
    assert names["suara_grpc_server_handling_seconds"][0] == "histogram"


async def test_every_documented_metric_is_exported_by_every_process_on_its_own_port(
    db_url: str, tmp_path: Path
) -> None:
    env = suara_env(DATABASE_URL=db_url, **FREE_PORTS)
    async with suara_up(env, tmp_path, "--tally-processes", "2") as up:
        entries = processes(up)
        assert sorted(s for s, _ in entries) == ["aggregate", "publish", "tally", "tally"]
        urls = [entry["metrics"] for _, entry in entries]
        assert len(set(urls)) == len(urls), f"two processes share a metrics URL: {urls}"
        for service, entry in entries:
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+/metrics", entry["metrics"])
            samples = await scrape(entry["metrics"])
            for name, (kind, labels, services) in documented().items():
                if service not in services:
                    continue
                sample = {"counter": f"{name}", "gauge": name, "histogram": f"{name}_count"}[kind]
                assert sample in samples, f"{service} ({entry['metrics']}) does not export {sample}"
                for got, _ in samples[sample]:
                    assert set(got) == labels, f"{sample} of {service} has labels {sorted(got)}, not {sorted(labels)}"
                    if "service" in got:
                        assert got["service"] == service
                if kind == "histogram":
                    assert f"{name}_bucket" in samples and f"{name}_sum" in samples
            for process_metric in ("process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds_total"):
                assert process_metric in samples, f"{service} lacks the process collector's {process_metric}"
            serving = dict((lbl["service"], v) for lbl, v in samples["suara_serving"])
            assert serving == {service: 1.0}
        assert await up.stop(signal.SIGTERM) == 0


# --- a real Prometheus ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def prometheus(targets: dict[str, list[str]], tmp_path: Path) -> AsyncIterator[str]:
    """Debian's Prometheus on a free loopback port, scraping `targets` (job → host:port…) every second;
    its storage in the test's directory. Its API's base URL."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    jobs = [
        {"job_name": job, "scrape_interval": f"{SCRAPE_S}s", "scrape_timeout": f"{SCRAPE_S}s",
         "static_configs": [{"targets": hosts}]}
        for job, hosts in targets.items()
    ]  # fmt: skip
    config.write_text(json.dumps({"global": {"scrape_interval": f"{SCRAPE_S}s"}, "scrape_configs": jobs}))
    log = (tmp_path / "prometheus.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
        stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    async def ready() -> bool:
        if proc.returncode is not None:
            raise AssertionError(f"prometheus exited {proc.returncode}: {(tmp_path / 'prometheus.log').read_text()}")
        try:
            async with aiohttp.ClientSession() as session, session.get(f"{base}/-/ready") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    try:
        await poll_until(ready, "Prometheus ready", 60, interval_s=0.1)
        yield base
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


async def query(base: str, promql: str) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base}/api/v1/query", params={"query": promql}) as response,
    ):
        body = await response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


@pytest.mark.slow
@pytest.mark.skipif(
    not PROMETHEUS.exists(),
    reason="Prometheus is not installed (Debian package `prometheus`; `make system-deps` installs it)",
)
async def test_prometheus_counts_the_forms_of_a_load_test_as_the_load_test_does(db_url: str, tmp_path: Path) -> None:
    env = suara_env(DATABASE_URL=db_url, **FREE_PORTS)
    async with suara_up(env, tmp_path, "--tally-processes", "2") as up:
        targets: dict[str, list[str]] = {f"suara-{s}": [] for s in SERVICES}
        for service, entry in processes(up):
            targets[f"suara-{service}"].append(entry["metrics"].removeprefix("http://").removesuffix("/metrics"))
        async with prometheus(targets, tmp_path) as base:
            report_path = tmp_path / "loadtest.json"
            admin_target = up.state()["services"]["tally"][0]["internal"]
            load = await asyncio.create_subprocess_exec(
                str(SUARA), "loadtest", "--target", up.ready["tally"], "--admin-target", admin_target,
                "--admin-key", up.ready["admin_key"], "--ca", up.ready["ca"], "--site", str(tmp_path / "site"),
                "--contests", "ppwp", "--scale", "0.3", "--concurrency", "8", "--seed", "7",
                "--report", str(report_path),
                env=env, cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            out, _ = await within(load.communicate(), "the load test", LOADTEST_TIMEOUT_S)
            assert load.returncode == 0, out.decode()
            finished = time.time()
            report = json.loads(report_path.read_text())
            assert report["outcomes"], "the load test answered no form"

            async def scraped_after_the_load_test() -> bool:
                """Both tally processes scraped, each after the load test ended."""
                rows = await query(base, 'timestamp(up{job="suara-tally"} == 1)')
                return len(rows) == 2 and all(float(r["value"][1]) > finished for r in rows)

            await poll_until(scraped_after_the_load_test, "a scrape of both tally processes after the load test", 60,
                             interval_s=0.2)  # fmt: skip
            rows = await query(base, "sum by (outcome) (suara_tally_forms_total)")
            counted = {r["metric"]["outcome"]: round(float(r["value"][1])) for r in rows}
            expected = {outcome.lower(): n for outcome, n in report["outcomes"].items()}
            # Forms tally refused for what they are (malformed): the load test counts them as INVALID_ARGUMENT.
            expected["rejected"] = report["errors"].get("INVALID_ARGUMENT", 0)
            assert {k: v for k, v in counted.items() if v} == {k: v for k, v in expected.items() if v}, (
                f"Prometheus {counted} vs the load test's report {report['outcomes']} / {report['errors']}"
            )
        assert await up.stop(signal.SIGTERM) == 0
