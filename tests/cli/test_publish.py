"""`suara publish run|rebuild|serve|status` as an operator runs them: the installed script in real subprocesses.

Tally (with its relay) and aggregate run in-process (tests/support/publish.py's `pipeline`); the commands
under test are real processes against the same database. Published files are checked against
tests/support/oracles/publish.py, computed from what tally acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import shutil
from pathlib import Path

import aiohttp
import asyncpg

from cli.embedded import free_port
from services.publish.cache import cache_control_for
from services.publish.server import LOCK_KEY
from suara.runtime.settings import Settings
from tests.support.processes import run_suara, running, suara_env
from tests.support.publish import PER_PUBLISHER, Pipeline

STARTUP_S = 60.0  # bound on a child importing, connecting and publishing its first (full) cycle
STOP_S = Settings().shutdown_grace_s + 10.0  # SIGTERM to exit: the grace period plus closing
SERVING = re.compile(r"^serving (?P<dir>.+) at (?P<url>http://\S+?)/? \(")


def _data_files(site: Path) -> dict[str, bytes]:
    """Every file but the pointer (which carries the time it was generated) and the feed and bulk files (named
    by snapshot or as of their last rewrite: each publisher writes its own)."""
    return {
        str(f.relative_to(site)): f.read_bytes()
        for f in site.rglob("*")
        if f.is_file()
        and not f.name.startswith("snapshot.json")
        and not f.relative_to(site).as_posix().startswith(PER_PUBLISHER)
    }


async def test_publish_and_each_action_explain_themselves(tmp_path: Path) -> None:
    env = suara_env()
    top, run, rebuild, serve, status = await asyncio.gather(
        run_suara("publish", "--help", env=env, cwd=tmp_path),
        run_suara("publish", "run", "--help", env=env, cwd=tmp_path),
        run_suara("publish", "rebuild", "--help", env=env, cwd=tmp_path),
        run_suara("publish", "serve", "--help", env=env, cwd=tmp_path),
        run_suara("publish", "status", "--help", env=env, cwd=tmp_path),
    )
    for done in (top, run, rebuild, serve, status):
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
    text = {name: " ".join(done.stdout.split()) for name, done in
            {"top": top, "run": run, "rebuild": rebuild, "serve": serve, "status": status}.items()}  # fmt: skip
    for action in ("run", "rebuild", "serve", "status"):
        assert action in text["top"]
    # run: what it does, what it needs and how to get it, where it writes and reports.
    run_phrases = (
        "SUARA_PUBLISH_INTERVAL_S",
        "suara/snapshot.json",
        "suara service issue --name publish --role reader",
        "SUARA_TALLY_ADDRESS",
        "GetStatus",
        "SUARA_SITE_DIR",
        "SUARA_PUBLISH_TO",
        "--site-dir",
        "--port",
    )
    for phrase in run_phrases:
        assert phrase in text["run"], phrase
    for phrase in ("byte-identical", "Refuses while another publisher is active", "--site-dir"):
        assert phrase in text["rebuild"], phrase
    for phrase in ("Cache-Control", "gzip", "SIGTERM", "--http-port", "--host"):
        assert phrase in text["serve"], phrase
    for phrase in ("JSON", "GetStatus", "--address"):
        assert phrase in text["status"], phrase


async def test_run_publishes_answers_status_and_stops_on_sigterm(
    pipeline: Pipeline, tmp_path: Path, site: Path
) -> None:
    rng = random.Random(21)
    await pipeline.random_night(rng, 20)
    await pipeline.random_night(rng, 5, contest="pdpr")
    await pipeline.delivered()
    env = await pipeline.publish_env("publish-cli", site, tmp_path)
    port = free_port()
    async with running("publish", "run", "--port", str(port), env=env, cwd=tmp_path) as child:
        await child.log.wait_for_event("published", STARTUP_S)
        await pipeline.check_site(site)
        pointer = json.loads((site / "suara/snapshot.json").read_bytes())

        asked = await run_suara("publish", "status", "--address", f"127.0.0.1:{port}", env=env, cwd=tmp_path)
        assert asked.returncode == 0, asked.stdout + asked.stderr
        status = json.loads(asked.stdout)  # int64 fields are JSON strings (proto3 JSON mapping)
        assert int(status["snapshot"]) == pointer["snapshot"]
        assert int(status["aggregateSequence"]) == pointer["aggregate_sequence"] == int(status["aggregateNewest"])
        published = {k: pointer["chain_head"][k] for k in ("position", "hash")}
        assert {"position": int(status["chainPosition"]), "hash": status["chainHash"]} == published
        assert status["fullRebuild"] is True and status["files"] > 0
        assert status["sink"] == f"local:{site}"

        assert await child.terminate(STOP_S) == 0
    names = [e.get("event") for e in child.log.events()]
    assert names.index("publish_active") < names.index("published") < names.index("shutting_down"), names
    assert "publish_stopped" in names, names


async def test_run_without_a_reader_credential_says_how_to_create_one(cli_env: dict[str, str], tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = await run_suara("publish", "run", "--port", "0", env={**cli_env, "SUARA_SITE_DIR": str(site)}, cwd=tmp_path)
    assert done.returncode != 0
    expected = tmp_path / "state" / "publish.key.json"  # the default: SUARA_DATA_DIR/publish.key.json
    assert str(expected) in done.stderr, done.stderr
    assert f"suara service issue --name publish --role reader --out {expected}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert not site.exists(), "nothing is written without a credential"


async def test_rebuild_rewrites_a_deleted_site_equal_to_the_oracle(pipeline: Pipeline, tmp_path: Path) -> None:
    rng = random.Random(22)
    await pipeline.random_night(rng, 25)
    await pipeline.random_night(rng, 5, contest="pkwkp")
    first = await pipeline.cycle()
    assert first is not None
    before = _data_files(pipeline.site)
    shutil.rmtree(pipeline.site)  # the site is lost
    env = await pipeline.publish_env("publish-cli", tmp_path / "unused", tmp_path)

    done = await run_suara("publish", "rebuild", "--site-dir", str(pipeline.site), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    head = await pipeline.db.fetchval("SELECT sequence FROM aggregate.head WHERE singleton")
    assert f"rebuilt snapshot {first.snapshot + 1} at aggregate sequence {head}:" in done.stdout, done.stdout
    await pipeline.check_site(pipeline.site)
    after = _data_files(pipeline.site)
    assert set(after) == set(before), set(after) ^ set(before)
    different = [path for path in after if after[path] != before[path]]
    shown = [f"{path}:\n  before {before[path]!r}\n  after  {after[path]!r}" for path in different[:2]]
    assert not different, f"a rebuild writes the same bytes as the publisher did; {len(different)} differ:\n" + (
        "\n".join(shown)
    )
    pointer = json.loads((pipeline.site / "suara/snapshot.json").read_bytes())
    assert (pointer["snapshot"], pointer["aggregate_sequence"]) == (first.snapshot + 1, head)


async def test_rebuild_refuses_while_another_publisher_holds_the_lock(
    pipeline: Pipeline, db_url: str, tmp_path: Path
) -> None:
    holder = await asyncpg.connect(db_url)
    try:
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY)
        site = tmp_path / "site"
        env = await pipeline.publish_env("publish-cli", site, tmp_path)
        done = await run_suara("publish", "rebuild", "--site-dir", str(site), env=env, cwd=tmp_path)
    finally:
        await holder.close()
    assert done.returncode != 0
    assert "another publisher is active on this database" in done.stderr, done.stderr
    assert not site.exists() or not any(site.rglob("*.json"))


async def test_serve_serves_the_site_with_its_cache_headers_and_exits_0_on_sigterm(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    await pipeline.random_night(random.Random(23), 10)
    assert await pipeline.cycle() is not None
    site = pipeline.site
    env = suara_env(SUARA_DATA_DIR=tmp_path / "state", SUARA_LOG_FORMAT="json")
    args = ("publish", "serve", "--site-dir", str(site), "--http-port", "0")
    async with running(*args, env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE) as child:
        assert child.proc.stdout is not None
        line = (await asyncio.wait_for(child.proc.stdout.readline(), STARTUP_S)).decode()
        match = SERVING.match(line)
        assert match, f"unexpected first line {line!r}:\n{child.log.text()}"
        assert match["dir"] == str(site)
        url = match["url"]

        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/") as page:
                assert page.status == 200
                assert page.headers["Content-Type"].startswith("text/html")
                assert page.headers["Cache-Control"] == cache_control_for("index.html")
                assert await page.read() == (site / "index.html").read_bytes()
            for path in ("pemilu/hhcw/ppwp.json", "suara/snapshot.json", "wilayah/pemilu/ppwp/0.json"):
                async with session.get(f"{url}/{path}", headers={"Accept-Encoding": "gzip"}) as got:
                    assert got.status == 200, path
                    assert got.headers["Cache-Control"] == cache_control_for(path), path
                    assert got.headers["Content-Type"].startswith("application/json"), path
                    assert got.headers.get("Content-Encoding") == "gzip", path  # the precompressed sibling
                    assert json.loads(await got.read()) == json.loads((site / path).read_bytes()), path
            policies = {cache_control_for(p) for p in ("pemilu/hhcw/ppwp.json", "suara/snapshot.json", "wilayah/x")}
            assert len(policies) == 3, "the three files above are of three cache kinds"
            async with session.get(f"{url}/pemilu/hhcw/nothing.json") as missing:
                assert missing.status == 404

        assert await child.terminate(STOP_S) == 0
