"""The in-process tally rig: a running tally per test, on a free port, against the test's own database."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from services.tally.access import create_admin_credential
from services.tally.credentials import enroll_device
from services.tally.server import TallyApp
from suara.client.stubs import tally_stub
from suara.election.signing import ChainKey, DeviceKey
from suara.runtime.settings import LogSettings, RelaySettings, Settings, TallySettings
from suara.runtime.tls import open_channel
from suara.v1 import tally_pb2_grpc
from tests.support.databases import as_service
from tests.support.factories import TEST_ELECTION, Station
from tests.support.pki import insecure, suite_pki, with_tls

# The photo store of every in-process tally of this test run unless a test gives its own: content-addressed,
# so tests sharing it cannot disturb each other, as tally processes sharing one do not; never the cwd's .suara.
PHOTO_STORE = Path(tempfile.mkdtemp(prefix="suara-test-photos-"))
atexit.register(shutil.rmtree, PHOTO_STORE, True)

# The chain key of every in-process tally of this test run (tests check heads against its public half).
CHAIN_KEY = ChainKey.generate()

# No relay in tally's own tests (they read the outbox themselves), whatever a developer keeps in .suara;
# no chain key file either (a tally made from these settings without CHAIN_KEY fails instead of making one).
# TLS with the suite's PKI, as in production; `insecure(BASE_SETTINGS)` for the plaintext debugging mode.
BASE_SETTINGS = with_tls(
    Settings(
        tally=TallySettings(
            port=0,
            internal_port=0,
            commit_wait_s=5.0,
            chain_key="/nonexistent/chain.key.json",
            photo_store=str(PHOTO_STORE),
        ),
        log=LogSettings(format="console"),
        relay=RelaySettings(credential="/nonexistent"),
    )
)


def with_tally(settings: Settings, **changes: Any) -> Settings:
    """`settings` with some of tally's own settings changed."""
    return replace(settings, tally=replace(settings.tally, **changes))


def relaying(settings: Settings, credential: object, aggregate: str) -> Settings:
    """`settings` for a tally whose relay delivers to `aggregate` (HOST:PORT) with the `credential` file."""
    relay = replace(settings.relay, credential=str(credential))
    return replace(settings, relay=relay, peers=replace(settings.peers, aggregate=aggregate))


@dataclass
class Tally:
    app: TallyApp
    channel: grpc.aio.Channel
    stub: tally_pb2_grpc.TallyServiceAsyncStub
    db: asyncpg.Connection
    db_url: str
    contests: dict[str, list[str]]  # contest id -> choice ids
    tps_codes: list[str]
    # The internal listener with an admin's certificate (TLS), or in plaintext a channel whose every call
    # carries an admin bearer token, and its stub: the admin and read methods.
    admin_channel: grpc.aio.Channel
    admin: tally_pb2_grpc.TallyServiceAsyncStub

    async def close(self) -> None:
        await self.channel.close()
        await self.admin_channel.close()
        await self.app.stop(grace=1.0)

    async def station(self, tps: str | None = None) -> Station:
        tps = tps or self.tps_codes.pop()
        key = DeviceKey.generate(tps, TEST_ELECTION)
        await enroll_device(self.db, key.device_id, tps, key.public_key, "test")
        return Station(tps, key)

    async def count(self, table: str) -> int:
        return int(await self.db.fetchval(f"SELECT count(*) FROM tally.{table}"))


async def start_tally(db_url: str, db: asyncpg.Connection, settings: Settings = BASE_SETTINGS) -> Tally:
    app = await TallyApp.create(settings, as_service(db_url, "tally"), CHAIN_KEY)  # tally's own role, as deployed
    await app.start()
    channel, admin_channel = await tally_channels(app, settings, db)
    rows = await db.fetch("SELECT contest, id FROM registry.choice ORDER BY contest, nomor_urut")
    contests: dict[str, list[str]] = {}
    for r in rows:
        contests.setdefault(r["contest"], []).append(r["id"])
    # National TPS outside DKI Jakarta, so province-scoped contests can be tested as "not held here".
    tps = [r["code"] for r in await db.fetch("SELECT code FROM registry.tps WHERE code NOT LIKE '31%' ORDER BY code")]
    return Tally(app, channel, tally_stub(channel), db, db_url, contests, tps, admin_channel, tally_stub(admin_channel))


async def tally_channels(
    app: TallyApp, settings: Settings, db: asyncpg.Connection
) -> tuple[grpc.aio.Channel, grpc.aio.Channel]:
    """A device's channel (the public listener) and an admin's (the internal listener, by certificate;
    in plaintext, by a bearer token in every call)."""
    if settings.tls.insecure:
        credential = await create_admin_credential(db, "test-admin")
        token = _WithMetadata((("authorization", f"Bearer {credential.token}"),))
        internal = f"127.0.0.1:{app.internal_port}"
        return open_channel(f"127.0.0.1:{app.port}", None), open_channel(internal, None, interceptors=[token])
    pki = suite_pki()
    admin = pki.credential("test-admin", "admin")
    return pki.channel(f"127.0.0.1:{app.port}"), pki.channel(f"127.0.0.1:{app.internal_port}", admin)


class _WithMetadata(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        merged = (*(details.metadata or ()), *self.metadata)
        return await continuation(details._replace(metadata=merged), request)


@pytest.fixture
async def tally(db_url: str, db: asyncpg.Connection) -> AsyncIterator[Tally]:
    t = await start_tally(db_url, db)
    yield t
    await t.close()


@pytest.fixture
async def insecure_tally(db_url: str, db: asyncpg.Connection) -> AsyncIterator[Tally]:
    """tally in plaintext (SUARA_INSECURE): the debugging mode, where admin bearer tokens are the proof."""
    t = await start_tally(db_url, db, insecure(BASE_SETTINGS))
    yield t
    await t.close()
