"""deploy/prometheus as shipped, in a real Prometheus (Debian's): it scrapes the targets file_sd.py
writes from up.json, under the three job names, and evaluates the alert rules on what it scraped."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from cli.embedded import free_port
from tests.deploy.monitoring import alert_rules
from tests.support.waiting import poll_until

PROMETHEUS = "/usr/bin/prometheus"

# What each stub process exposes: tally is up but not SERVING (its database gate open, its relay
# active), aggregate serves, publish is active and current. The one alert due: SuaraNoTallyServing.
STUBS = {
    "tally": 'suara_serving{service="tally"} 0\nsuara_tally_database_gate_open 1\nsuara_relay_is_leader 1\n',
    "aggregate": 'suara_serving{service="aggregate"} 1\n',
    "publish": 'suara_serving{service="publish"} 1\nsuara_publish_is_leader 1\nsuara_publish_lag_seconds 0\n',
}
PATHS = {"tally": "/metrics", "aggregate": "/metrics", "publish": "/elsewhere/metrics"}


@asynccontextmanager
async def stub_exporters() -> AsyncIterator[dict[str, str]]:
    """One HTTP server per service on loopback, serving STUBS[service] at PATHS[service]: service -> URL."""
    runners, urls = [], {}
    try:
        for service, text in STUBS.items():
            app = web.Application()

            async def metrics(_: web.Request, text: str = text) -> web.Response:
                return web.Response(text=text, content_type="text/plain")

            app.router.add_get(PATHS[service], metrics)
            runner = web.AppRunner(app)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            host, port = runner.addresses[0][:2]
            urls[service] = f"http://{host}:{port}{PATHS[service]}"
        yield urls
    finally:
        for runner in runners:
            await runner.cleanup()


def _tail(log: Path) -> str:
    return log.read_text()[-3000:]


@asynccontextmanager
async def prometheus(config_dir: Path, data_dir: Path, log: Path) -> AsyncIterator[str]:
    """Prometheus on `config_dir`/prometheus.yml, its API on a loopback port: that API's URL."""
    port = free_port()
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            PROMETHEUS,
            f"--config.file={config_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={data_dir}",
            f"--web.listen-address=127.0.0.1:{port}",
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()
        if process.returncode not in (0, -signal.SIGTERM):
            raise AssertionError(f"prometheus exited {process.returncode}:\n{_tail(log)}")


@pytest.mark.slow
async def test_prometheus_scrapes_up_json_targets_and_evaluates_the_rules(repo_root: Path, tmp_path: Path) -> None:
    if shutil.which(PROMETHEUS) is None:
        pytest.skip(f"{PROMETHEUS} is missing: install Debian's package prometheus (`make system-deps`, as root)")
    config = tmp_path / "prometheus"
    shutil.copytree(repo_root / "deploy" / "prometheus", config, ignore=shutil.ignore_patterns("targets"))
    log = tmp_path / "prometheus.log"
    async with stub_exporters() as urls, aiohttp.ClientSession() as http:
        up = tmp_path / "up.json"
        up.write_text(
            json.dumps({"services": {s: [{"address": "127.0.0.1:1", "metrics": u}] for s, u in urls.items()}})
        )
        file_sd = await asyncio.create_subprocess_exec(
            sys.executable, str(config / "file_sd.py"), str(up), str(config / "targets")
        )
        assert await file_sd.wait() == 0
        async with prometheus(config, tmp_path / "tsdb", log) as api:
            state: dict[str, Any] = {}

            async def get(path: str) -> Any:
                try:
                    async with http.get(f"{api}{path}") as reply:
                        return (await reply.json())["data"] if reply.status == 200 else None
                except aiohttp.ClientConnectionError:
                    return None  # not listening yet

            async def settled() -> bool:
                targets, alerts = await get("/api/v1/targets"), await get("/api/v1/alerts")
                if targets is None or alerts is None:
                    return False
                state["targets"] = {t["labels"]["job"]: (t["health"], t["scrapeUrl"]) for t in targets["activeTargets"]}
                state["alerts"] = {a["labels"]["alertname"] for a in alerts["alerts"]}
                healthy = all(health == "up" for health, _ in state["targets"].values())
                return len(state["targets"]) == 3 and healthy and state["alerts"] == {"SuaraNoTallyServing"}

            await poll_until(
                settled,
                "the three jobs scraped and only SuaraNoTallyServing active",
                interval_s=0.2,
                detail=lambda: f"{state}\n{_tail(log)}",
            )
            assert state["targets"] == {f"suara-{s}": ("up", url) for s, url in urls.items()}
            rules = await get("/api/v1/rules")
            loaded = {r["name"] for g in rules["groups"] for r in g["rules"] if r["type"] == "alerting"}
            assert loaded == {r["alert"] for r in alert_rules(repo_root)}
