"""The backup drill: `suara db backup` in the middle of election night, restored into a fresh directory.

`suara up` (embedded PostgreSQL) takes forms from devices; once part of them are acknowledged,
`suara db backup` runs while the devices keep sending (new TPS, then corrections), and they go on
after it with TPS kept for then. The site is then
lost with its machine: the backup is restored into a new data directory (with the keys, kept apart
as the runbook says) and `suara up` runs on it. The oracle is the devices' side: every form sent and
every receipt, with when it came back. Then:

  - every form acknowledged before the backup started is in the restored database, byte for byte;
  - no form is there twice, and aggregate counts each TPS once;
  - `suara audit verify` passes on the restored chain, which also reaches the head the site had
    published before the backup;
  - once the restored relay and aggregate have caught up, the published national totals equal the
    sum, computed here, of the forms the restored database holds.

The same backup restored with the WAL `suara db archive` streamed meanwhile holds every form
acknowledged, after the backup too.

The figures are printed (run with -s): forms acknowledged before / during / after the backup and how
many of each came back, forms twice, and the totals against the oracle's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from cli.embedded import OWNER_ROLE, EmbeddedPostgres
from suara.client.stubs import tally_stub
from suara.election.signing import DeviceKey
from suara.runtime.tls import open_channel
from suara.v1 import tally_pb2
from tests.cli.test_backup import archived_up_to_now
from tests.cli.test_up import FREE_PORTS, suara_up
from tests.support.factories import consistent_form, signed
from tests.support.processes import run_suara, running, suara_env
from tests.support.waiting import poll_until, within

pytestmark = pytest.mark.slow

SCALE = "0.001"  # about 800 TPS: a load of a few seconds, long enough to straddle the backup
CONCURRENCY = 8
BACKUP_AFTER = 0.3  # share of the TPS acknowledged when the backup starts
CORRECTED = 0.2  # share of TPS that send a version 2
RESERVE = 0.15  # share of the TPS sent only once the backup has ended
RESENT = 0.1  # share of TPS whose version 1 is sent twice (a lost reply)
CATCH_UP_S = 180.0  # the restored relay, aggregate and publish working through the backlog


@dataclass
class Sent:
    """One form as the device sent it, and its receipt if one came back."""

    tps: str
    version: int
    payload: bytes
    votes: dict[str, int]
    submission_id: str = ""
    acked_at: float = 0.0


async def _fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def _night(up: Any, owner_url: str, backup: Path, env: dict[str, str], cwd: Path) -> tuple[
    dict[tuple[str, int], Sent], float, float
]:  # fmt: skip
    """Enroll a device per TPS, send every form, and run `suara db backup` in the middle of it.
    The forms sent by (tps, version), and when the backup started and ended (monotonic)."""
    rows = await _fetch(owner_url, "SELECT code FROM registry.tps ORDER BY code")
    tps = [r["code"] for r in rows]
    choices = [r["id"] for r in await _fetch(
        owner_url, "SELECT id FROM registry.choice WHERE contest = 'ppwp' ORDER BY nomor_urut")]  # fmt: skip
    rng = random.Random(16)
    rng.shuffle(tps)
    internal = up.state()["services"]["tally"][0]["internal"]
    keys: dict[str, DeviceKey] = {}
    async with open_channel(internal, up.tls(Path(up.ready["admin_key"]))) as admin_channel:
        admin = tally_stub(admin_channel)
        sem = asyncio.Semaphore(CONCURRENCY)

        async def enroll(code: str) -> None:
            key = DeviceKey.generate(code)
            async with sem:
                done = await admin.EnrollDevice(
                    tally_pb2.EnrollDeviceRequest(tps=code, public_key=key.public_key, label="drill")
                )
            keys[code] = dataclasses.replace(key, election_id=done.election_id)

        await asyncio.gather(*(enroll(code) for code in tps))

    sent: dict[tuple[str, int], Sent] = {}
    acked_tps = 0
    half_way = asyncio.Event()
    times: dict[str, float] = {}

    async def take_backup() -> None:
        await half_way.wait()
        times["start"] = time.monotonic()
        try:
            made = await run_suara("db", "backup", str(backup), env=env, cwd=cwd)
        finally:
            times["end"] = time.monotonic()  # the devices stop their corrections either way
        assert made.returncode == 0, made.stderr

    backup_task = asyncio.create_task(take_backup())
    async with open_channel(up.ready["tally"], up.tls()) as channel:
        stub = tally_stub(channel)

        async def submit(key: DeviceKey, version: int) -> None:
            form = consistent_form(key.tps, "ppwp", choices, version, election_id=key.election_id)
            request = signed(key, form)
            record = sent[(key.tps, version)] = Sent(key.tps, version, request.form.payload, dict(form.votes))
            times_sent = 2 if version == 1 and rng.random() < RESENT else 1
            for _ in range(times_sent):
                for attempt in range(20):  # as a device's outbox does: the same bytes until a receipt
                    try:
                        response = await stub.Submit(request, timeout=30)
                    except grpc.aio.AioRpcError as error:
                        assert error.code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}, error
                        await asyncio.sleep(0.05 * (attempt + 1))
                        continue
                    assert response.outcome in {tally_pb2.OUTCOME_ACCEPTED, tally_pb2.OUTCOME_DUPLICATE}, response
                    assert record.submission_id in {"", response.receipt.submission_id}, "a resend got another receipt"
                    record.submission_id = response.receipt.submission_id
                    record.acked_at = record.acked_at or time.monotonic()
                    break

        pending = list(tps)
        latest: dict[str, int] = {}
        busy: set[str] = set()

        async def device() -> None:
            """Fresh TPS, but a reserve kept for after the backup; while it runs and no fresh TPS is left
            but the reserve, corrections (a TPS's next version)."""
            nonlocal acked_tps
            while True:
                ended = "end" in times
                if len(pending) > RESERVE * len(tps) or (ended and pending):
                    code = pending.pop()
                    busy.add(code)
                    latest[code] = 1
                    await submit(keys[code], 1)
                    if rng.random() < CORRECTED:
                        latest[code] = 2
                        await submit(keys[code], 2)
                    busy.discard(code)
                    acked_tps += 1
                    if acked_tps >= BACKUP_AFTER * len(tps):
                        half_way.set()
                elif not ended:
                    code = rng.choice([c for c in latest if c not in busy])
                    busy.add(code)
                    latest[code] += 1
                    await submit(keys[code], latest[code])
                    busy.discard(code)
                else:
                    return

        await asyncio.gather(*(device() for _ in range(CONCURRENCY)))
    await backup_task
    return sent, times["start"], times["end"]


async def test_a_backup_taken_under_load_restores_every_acknowledged_form_and_the_same_totals(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    source, target, backup = tmp_path / "source", tmp_path / "target", tmp_path / "backup"
    archived, wal = tmp_path / "archived", tmp_path / "wal"
    for d in (source, target, archived):
        d.mkdir()
    env = suara_env(**FREE_PORTS, SUARA_TALLY_PEER_RATE="1000000", SUARA_PUBLISH_INTERVAL_S="0.2")
    source_env = {**env, "SUARA_DATA_DIR": str(source / "state")}
    try:
        async with suara_up(env, source, "--scale", SCALE) as up:
            server = EmbeddedPostgres(source / "state" / "pgdata")
            async with running("db", "archive", str(wal), env=source_env, cwd=tmp_path) as archiver:
                sent, started, ended = await _night(up, server.url(role=OWNER_ROLE), backup, source_env, tmp_path)
                # The site publishes the night's last head before the machine is lost.
                head = (await _fetch(server.url(role=OWNER_ROLE), "SELECT position FROM tally.chain_head"))[0]
                await poll_until(lambda: _published(source / "site", head["position"]),
                                 "the source site published the chain's head", CATCH_UP_S)  # fmt: skip
                await archived_up_to_now(server.url())
                archiver.assert_alive()
                await archiver.terminate(10)
            assert await up.stop(signal.SIGTERM) == 0, up.log.text()

        # The machine is gone; the keys were kept apart (runbook): they come back beside the restore.
        for kept in ["pki", "chain.key.json", *(p.name for p in (source / "state").glob("*.pem"))]:
            path = source / "state" / kept
            if path.is_dir():
                shutil.copytree(path, target / "state" / kept)
            elif path.exists():
                (target / "state").mkdir(exist_ok=True)
                shutil.copy2(path, target / "state" / kept)
        restored = await run_suara("db", "restore", str(backup), "--data-dir", str(target / "state"),
                                   env=suara_env(), cwd=tmp_path)  # fmt: skip
        assert restored.returncode == 0, restored.stderr

        async with suara_up(env, target) as up:
            url = EmbeddedPostgres(target / "state" / "pgdata").url(role=OWNER_ROLE)
            figures = await _check(sent, started, ended, url, target / "site", env, target)
            # Against the lost site's last heads: the backup alone lacks what came after it, and says so.
            against = await run_suara("audit", "verify", "--against", str(source / "site"),
                                      env={**env, "SUARA_DATA_DIR": str(target / "state")}, cwd=target)  # fmt: skip
            assert against.returncode == 1 and "records were deleted since" in against.stdout, against.stdout
            assert await up.stop(signal.SIGTERM) == 0, up.log.text()

        # The same backup with the WAL archive: what was acknowledged after the backup comes back too.
        restored = await run_suara("db", "restore", str(backup), "--data-dir", str(archived / "state"),
                                   "--wal-archive", str(wal), env=suara_env(), cwd=tmp_path)  # fmt: skip
        assert restored.returncode == 0, restored.stderr
        with_archive = EmbeddedPostgres(archived / "state" / "pgdata")
        with_archive.start()
        rows = await _fetch(with_archive.url(role=OWNER_ROLE), "SELECT id, tps, version, payload FROM tally.submission")
        stored = {(r["tps"], r["version"]): (str(r["id"]), bytes(r["payload"])) for r in rows}
        back = sum(stored.get((s.tps, s.version)) == (s.submission_id, s.payload) for s in sent.values())
        figures["with_wal_archive_acked_restored"] = f"{back} of {len(sent)}"
        assert back == len(sent) == len(stored), "with the archive, every acknowledged form, and nothing else"
        against = await run_suara("audit", "verify", "--against", str(source / "site"),
                                  env={**env, "SUARA_DATA_DIR": str(archived / "state")}, cwd=archived)  # fmt: skip
        assert against.returncode == 0, against.stdout + against.stderr  # every head the lost site published
        record_property("figures", "backup drill: " + json.dumps(figures))
    finally:
        for pgdata in (source / "state" / "pgdata", target / "state" / "pgdata", archived / "state" / "pgdata"):
            EmbeddedPostgres(pgdata).stop("immediate")


async def _published(site: Path, position: int) -> bool:
    """Whether the site's pointer carries the chain head at `position`."""
    pointer = site / "suara" / "snapshot.json"
    return pointer.exists() and (json.loads(pointer.read_text())["chain_head"] or {}).get("position") == position


async def _check(
    sent: dict[tuple[str, int], Sent], started: float, ended: float, url: str, site: Path, env: dict[str, str],
    cwd: Path,
) -> dict[str, Any]:  # fmt: skip
    stored = {
        (r["tps"], r["version"]): (str(r["id"]), bytes(r["payload"]))
        for r in await _fetch(url, "SELECT id, tps, version, payload FROM tally.submission WHERE contest = 'ppwp'")
    }
    acked = [s for s in sent.values() if s.submission_id]
    assert len(acked) == len(sent), "every form got its receipt in the end"
    before = [s for s in acked if s.acked_at < started]
    during = [s for s in acked if started <= s.acked_at <= ended]
    after = [s for s in acked if s.acked_at > ended]

    def back(forms: list[Sent]) -> int:
        return sum(stored.get((s.tps, s.version)) == (s.submission_id, s.payload) for s in forms)

    lost = len(before) - back(before)
    strangers = [k for k in stored if k not in sent]
    twice = (await _fetch(url, "SELECT count(*) AS n FROM (SELECT 1 FROM tally.submission "
                               "GROUP BY tps, contest, version HAVING count(*) > 1) t"))[0]["n"]  # fmt: skip
    assert lost == 0, f"{lost} form(s) acknowledged before the backup started are missing from it"
    assert not strangers, f"forms nobody sent: {strangers[:5]}"
    assert twice == 0
    assert during, "the load did not run while the backup did: the drill proved nothing"

    # Let the restored relay deliver what the backup caught in its outbox, and publish write it.
    async def caught_up() -> int:
        while True:
            pending = (await _fetch(url, "SELECT count(*) AS n FROM tally.outbox WHERE delivered_at IS NULL"))[0]["n"]
            dead = (await _fetch(url, "SELECT count(*) AS n FROM tally.dead_letter"))[0]["n"]
            assert dead == 0
            if pending == 0:
                head = (await _fetch(url, "SELECT sequence FROM aggregate.head"))[0]["sequence"]
                pointer = site / "suara" / "snapshot.json"
                if pointer.exists():
                    snap = json.loads(pointer.read_text())
                    if snap["caught_up"] and snap["aggregate_sequence"] >= head:
                        return int(head)
            await asyncio.sleep(0.2)

    await within(caught_up(), "the restored relay, aggregate and publish caught up", CATCH_UP_S)

    # The oracle: the current version of each TPS in the restored database, as the device sent it.
    current = await _fetch(url, "SELECT tps, version FROM tally.current WHERE contest = 'ppwp'")
    expected: Counter[str] = Counter()
    for r in current:
        expected.update(sent[(r["tps"], r["version"])].votes)
    national = json.loads((site / "pemilu" / "hhcw" / "ppwp.json").read_text())
    published = {k: v for k, v in national["chart"].items() if k != "persen"}
    area = await _fetch(url, "SELECT tps_reported FROM aggregate.area_total WHERE contest = 'ppwp' AND area = ''")
    assert published == dict(expected), (published, dict(expected))
    assert national["progres"]["progres"] == len(current) == area[0]["tps_reported"], "a TPS counted twice"

    verified = await run_suara("audit", "verify", "--json", env={**env, "SUARA_DATA_DIR": str(cwd / "state")},
                               cwd=cwd)  # fmt: skip
    report = json.loads(verified.stdout)
    assert verified.returncode == 0 and report["ok"], verified.stdout + verified.stderr
    assert report["records"] == len(stored)
    return {
        "forms_sent": len(sent),
        "acked_before_backup_start": len(before),
        "acked_before_backup_start_lost": lost,
        "acked_during_backup": len(during),
        "acked_during_backup_restored": back(during),
        "acked_after_backup_end": len(after),
        "acked_after_backup_end_restored": back(after),
        "backup_seconds": round(ended - started, 2),
        "forms_twice": twice,
        "tps_counted": len(current),
        "totals_published": published,
        "totals_oracle": dict(expected),
        "chain_records_verified": report["records"],
    }
