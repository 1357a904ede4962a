"""`suara up` as an operator runs it: a real process tree that serves, heals and stops cleanly.

The ready line is parsed with a regex of exactly the documented format; everything a test then
does goes through the addresses and the admin key that line gives, as an operator's would.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import pytest

from cli.embedded import EmbeddedPostgres
from cli.supervisor import recorded_pids
from suara.client.stubs import tally_stub
from suara.election.signing import DeviceKey
from suara.runtime.auth.certificate import CertCredential
from suara.runtime.tls import ClientTls, open_channel
from suara.v1 import tally_pb2
from tests.support.factories import consistent_form, jpeg, signed
from tests.support.processes import SUARA, Child, LogTail, suara_env
from tests.support.waiting import within

READY = re.compile(
    r"^ready tally=(?P<tally>127\.0\.0\.1:\d+) site=(?P<site>http://127\.0\.0\.1:\d+/) admin_key=(?P<admin_key>/\S+)"
    r" ca=(?P<ca>/\S+)$"
)
READY_TIMEOUT_S = 120.0  # an embedded initdb, the registry load and four children starting, on a busy machine
RESTART_TIMEOUT_S = 60.0
# Four children stopped one after the other, each well inside SUARA_SHUTDOWN_GRACE_S, then PostgreSQL.
STOP_TIMEOUT_S = 30.0
CHILDREN = {"aggregate", "tally", "publish", "site"}
FREE_PORTS = {
    f"SUARA_{name}_PORT": "0" for name in ("TALLY", "TALLY_INTERNAL", "AGGREGATE", "AGGREGATE_INTERNAL", "PUBLISH")
}


@dataclass
class Up:
    proc: asyncio.subprocess.Process
    ready: re.Match[str]
    stdout: list[str]
    log: LogTail
    data_dir: Path

    def state(self) -> dict[str, Any]:
        recorded: dict[str, Any] = json.loads((self.data_dir / "up.json").read_text())
        assert recorded["pid"] == self.proc.pid
        return recorded

    def pids(self) -> dict[str, int]:
        """Each process of up.json by its service's name (one process each here), and the site server's."""
        state = self.state()
        pids = {"site": int(state["site"]["pid"])}
        for service, entries in state["services"].items():
            (entry,) = entries
            pids[service] = int(entry["pid"])
        return pids

    def tls(self, credential: Path | None = None) -> ClientTls:
        """TLS as a client of this `suara up` knows it from the ready line: its CA (and a certificate)."""
        identity = None if credential is None else CertCredential.load(credential).key_pair
        return ClientTls(Path(self.ready["ca"]).read_bytes(), identity)

    async def stop(self, sig: signal.Signals) -> int:
        self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
        await self.log.finish()
        return code


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes; `up` reaps its own children, so one would mean it did not.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    return False


@contextlib.asynccontextmanager
async def suara_up(env: dict[str, str], cwd: Path, *extra: str) -> AsyncIterator[Up]:
    data_dir = cwd / "state"
    child = await Child.spawn(
        "up", "--data-dir", str(data_dir), "--site-dir", str(cwd / "site"), "--http-port", "0", "--scale", "0.0005",
        *extra, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    proc, log = child.proc, child.log
    assert proc.stdout is not None
    stdout = proc.stdout
    lines: list[str] = []

    async def ready_line() -> None:
        while True:
            raw = await stdout.readline()
            assert raw, f"suara up ended before its ready line ({await proc.wait()}):\n{log.text()}"
            lines.append(raw.decode().rstrip("\n"))
            if lines[-1].startswith("ready "):
                return

    try:
        await within(ready_line(), "suara up's ready line", READY_TIMEOUT_S, detail=log.text)
        match = READY.match(lines[-1])
        assert match, f"the ready line is not in the documented format: {lines[-1]!r}"
        yield Up(proc, match, lines, log, data_dir)
    finally:
        if proc.returncode is None:  # the test failed before stopping it: take the whole tree down
            with contextlib.suppress(OSError, ValueError):
                for pid in recorded_pids(json.loads((data_dir / "up.json").read_text())):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
            proc.kill()
            await proc.wait()
        await log.finish()


async def fetch(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def test_up_serves_restarts_a_killed_tally_and_stops_on_sigterm(
    db_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    env = suara_env(DATABASE_URL=db_url, **FREE_PORTS)
    async with suara_up(env, tmp_path) as up:
        assert [line for line in up.stdout if line.strip()] == [up.ready.group(0)], "stdout is the ready line only"
        admin_key = Path(up.ready["admin_key"])
        assert admin_key == (tmp_path / "state" / "admin.pem").resolve()
        assert admin_key.is_file()  # noqa: ASYNC240  (one stat in a test)
        assert Path(up.ready["ca"]) == (tmp_path / "state" / "pki" / "ca.crt").resolve()
        state = up.state()
        assert (state["ca"], state["admin_key"], state["database_url"]) == (up.ready["ca"], str(admin_key), db_url)
        assert state["site"]["url"] == up.ready["site"] and state["site"]["dir"] == str((tmp_path / "site").resolve())
        assert state["services"]["tally"][0]["address"] == up.ready["tally"]
        tally_internal = state["services"]["tally"][0]["internal"]
        assert tally_internal != up.ready["tally"] and state["services"]["aggregate"][0]["internal"]

        status, page = await fetch(up.ready["site"])
        assert status == 200 and "<html" in page.lower()
        assert (tmp_path / "site" / "index.html").is_file()  # publish wrote it; the site server serves it

        pids = up.pids()
        assert set(pids) == CHILDREN and all(alive(pid) for pid in pids.values())

        # Through the ready line only: the admin key enrolls a device, the device's form is accepted.
        tps = await db.fetchval("SELECT code FROM registry.tps ORDER BY code LIMIT 1")
        choices = [
            r["id"] for r in await db.fetch("SELECT id FROM registry.choice WHERE contest = 'ppwp' ORDER BY nomor_urut")
        ]
        key = DeviceKey.generate(tps)
        form, photo = consistent_form(tps, "ppwp", choices), jpeg(b"the C1 page")
        form.photo_sha256.append(sha := hashlib.sha256(photo).hexdigest())
        request = signed(key, form, [photo])
        enroll = tally_pb2.EnrollDeviceRequest(tps=tps, public_key=key.public_key, label="test")
        async with open_channel(up.ready["tally"], up.tls()) as channel:  # a device: no certificate of its own
            stub = tally_stub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.EnrollDevice(enroll)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            async with open_channel(tally_internal, up.tls(admin_key)) as admin:  # the admin, by certificate
                await tally_stub(admin).EnrollDevice(enroll)
            first = await stub.Submit(request)
        assert first.outcome == tally_pb2.OUTCOME_ACCEPTED
        # The photo is in the default store under the data directory, not in the database.
        assert (tmp_path / "state" / "photos" / sha[:2] / sha[2:4] / sha).read_bytes() == photo
        assert await db.fetchval("SELECT content IS NULL FROM tally.photo WHERE sha256 = $1", sha) is True

        # SIGKILL tally: `up` restarts it on the same address and logs it.
        os.kill(pids["tally"], signal.SIGKILL)
        await up.log.wait_for_event("child_restarted", RESTART_TIMEOUT_S)
        (restarted,) = (e for e in up.log.events() if e["event"] == "child_restarted")
        assert (restarted["name"], restarted["exit_code"], restarted["restarts"]) == ("tally", -signal.SIGKILL, 1)
        after = up.pids()
        assert after["tally"] == restarted["pid"] != pids["tally"] and alive(after["tally"])
        assert {n: p for n, p in after.items() if n != "tally"} == {n: p for n, p in pids.items() if n != "tally"}
        assert up.state()["services"]["tally"][0]["pid"] == after["tally"]  # up.json follows the restart
        async with open_channel(up.ready["tally"], up.tls()) as channel:
            again = await tally_stub(channel).Submit(request)  # the same form, resent after a lost reply
        assert again.outcome == tally_pb2.OUTCOME_DUPLICATE
        assert again.receipt.submission_id == first.receipt.submission_id

        assert await up.stop(signal.SIGTERM) == 0, up.log.text()
    every = {*pids.values(), *after.values()}
    assert not [pid for pid in every if alive(pid)], "a child outlived `suara up`"
    assert not (tmp_path / "state" / "up.json").exists()
    stopped = [e["name"] for e in up.log.events() if e["event"] == "child_stopped"]
    assert stopped == ["site", "publish", "tally", "aggregate"]  # reverse dependency order
    for name in CHILDREN:  # each child logged JSON lines to its own file
        lines = (tmp_path / "state" / "logs" / f"{name}.log").read_text().splitlines()
        assert lines and all(json.loads(line)["event"] for line in lines if line.startswith("{"))


async def test_up_runs_its_own_postgresql_and_stops_it_on_sigint(tmp_path: Path) -> None:
    env = suara_env(**FREE_PORTS)  # no DATABASE_URL
    server = EmbeddedPostgres(tmp_path / "state" / "pgdata")
    try:
        async with suara_up(env, tmp_path) as up:
            assert server.is_running()
            status, _ = await fetch(up.ready["site"])
            assert status == 200
            pids = up.pids()
            # The children use up's server: none started one of its own (one postmaster, in up's data dir).
            conn = await asyncpg.connect(server.url())
            try:
                assert await conn.fetchval("SELECT count(*) FROM registry.tps") > 0
                names = {
                    r["application_name"] for r in await conn.fetch("SELECT application_name FROM pg_stat_activity")
                }
                # Each service as its own role: none holds the superuser's or the owner's connection.
                users = await conn.fetch(
                    "SELECT DISTINCT application_name, usename FROM pg_stat_activity WHERE application_name = ANY($1)",
                    ["suara-tally", "suara-relay", "suara-aggregate", "suara-publish"],
                )
                owners = await conn.fetch(
                    "SELECT nspname, pg_get_userbyid(nspowner) AS owner FROM pg_namespace WHERE nspname = ANY($1)",
                    ["registry", "tally", "aggregate", "publish"],
                )
            finally:
                await conn.close()
            assert {"suara-publish"} <= names, names
            roles = {"suara-tally": "suara_tally", "suara-relay": "suara_tally", "suara-aggregate": "suara_aggregate",
                     "suara-publish": "suara_publish"}  # fmt: skip
            seen = {(r["application_name"], r["usename"]) for r in users}
            assert seen == {(app, role) for app, role in roles.items() if app in {a for a, _ in seen}}, seen
            assert {a for a, _ in seen} >= {"suara-tally", "suara-aggregate", "suara-publish"}, seen
            assert {r["owner"] for r in owners} == {"suara_owner"}, owners  # the migrations ran as the owner
            assert await up.stop(signal.SIGINT) == 0, up.log.text()
        assert not [pid for pid in pids.values() if alive(pid)], "a child outlived `suara up`"
        assert not server.is_running(), "`suara up` started the embedded PostgreSQL, so it must stop it"
    finally:
        server.stop()


async def test_up_help_documents_the_ready_line(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(SUARA), "up", "--help", env=suara_env(), cwd=tmp_path, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    text = " ".join(out.decode().split())
    assert "ready tally=HOST:PORT site=URL admin_key=PATH ca=PATH" in text
    for flag in ("--data-dir", "--site-dir", "--http-port", "--scale", "--seed", "--tally-port"):
        assert flag in text


async def test_up_exits_1_naming_the_log_when_a_service_cannot_start(db_url: str, tmp_path: Path) -> None:
    # An address of no interface here (TEST-NET-1): aggregate, the first service, cannot bind and fails at once.
    env = suara_env(DATABASE_URL=db_url, SUARA_AGGREGATE_HOST="192.0.2.1", SUARA_AGGREGATE_PORT="0")
    proc = await asyncio.create_subprocess_exec(
        str(SUARA), "up", "--data-dir", str(tmp_path / "state"), "--site-dir", str(tmp_path / "site"),
        "--http-port", "0", env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), READY_TIMEOUT_S)
    assert proc.returncode == 1
    assert not out.strip(), "no ready line when something is not serving"
    log = tmp_path / "state" / "logs" / "aggregate.log"
    assert f"aggregate exited with 1 while starting; see {log.resolve()}" in err.decode()
    assert "bind to address 192.0.2.1:" in log.read_text()  # the child's own error is in its log
    assert not (tmp_path / "state" / "up.json").exists()
