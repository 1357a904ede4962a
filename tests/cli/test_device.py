"""`suara device enroll|revoke`: the key file it writes is private and works against tally; a revoked
key is refused by a running tally within a second, and a new key for the same TPS takes over."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import grpc
import pytest
import structlog

from suara.election.signing import DeviceKey
from suara.v1 import tally_pb2
from tests.cli.files import PRIVATE, file_mode, files_in
from tests.support.factories import TEST_ELECTION, consistent_form, signed
from tests.support.processes import run_suara
from tests.support.tally import Tally
from tests.support.waiting import poll_until


async def test_device_enroll_writes_a_private_key_that_tally_accepts(
    tally: Tally, cli_env: dict[str, str], tmp_path: Path
) -> None:
    tps = tally.tps_codes.pop()
    out = tmp_path / "device.key.json"
    result = await run_suara(
        "device", "enroll", "--tps", tps, "--out", str(out), "--label", "KPPS 1", env=cli_env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert file_mode(out) == PRIVATE
    key = DeviceKey.load(out)
    assert key.tps == tps
    assert key.election_id == TEST_ELECTION  # the registry's: the device signs it into its forms
    assert key.device_id in result.stdout and tps in result.stdout
    device = await tally.db.fetchrow(
        "SELECT tps, public_key, label, revoked_at FROM tally.device WHERE device_id = $1", key.device_id
    )
    assert device is not None
    assert (device["tps"], bytes(device["public_key"]), device["label"]) == (tps, key.public_key, "KPPS 1")
    assert device["revoked_at"] is None

    response = await tally.stub.Submit(signed(key, consistent_form(tps, "ppwp", tally.contests["ppwp"])))
    assert response.outcome == tally_pb2.OUTCOME_ACCEPTED
    assert response.receipt.chain_position == await tally.count("submission")


async def test_device_enroll_without_out_names_the_file_after_tps_and_device(
    db: asyncpg.Connection, cli_env: dict[str, str], tmp_path: Path
) -> None:
    tps = await db.fetchval("SELECT code FROM registry.tps ORDER BY code LIMIT 1")
    result = await run_suara("device", "enroll", "--tps", tps, env=cli_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (written,) = (p for p in files_in(tmp_path) if p.name.endswith(".key.json"))
    key = DeviceKey.load(written)
    assert written.name == f"{tps}-{key.device_id}.key.json"  # the documented default ./TPS-DEVICEID.key.json
    assert file_mode(written) == PRIVATE
    assert await db.fetchval("SELECT tps FROM tally.device WHERE device_id = $1", key.device_id) == tps


@pytest.mark.parametrize("tps", ["9999999999999", "31-not-a-code"], ids=["unknown", "malformed"])
async def test_device_enroll_refuses_a_tps_not_in_the_registry(
    tps: str, db: asyncpg.Connection, cli_env: dict[str, str], tmp_path: Path
) -> None:
    assert await db.fetchval("SELECT count(*) FROM registry.tps WHERE code = $1", tps) == 0
    work = tmp_path / "work"
    work.mkdir()
    out = work / "device.key.json"
    result = await run_suara("device", "enroll", "--tps", tps, "--out", str(out), env=cli_env, cwd=work)
    assert result.returncode == 2
    assert tps in result.stderr and "registry" in result.stderr
    assert "Traceback" not in result.stderr
    assert files_in(work) == []  # neither --out nor any default file
    assert await db.fetchval("SELECT count(*) FROM tally.device") == 0


async def test_device_enroll_never_overwrites_an_existing_key_file(
    db: asyncpg.Connection, cli_env: dict[str, str], tmp_path: Path
) -> None:
    tps = await db.fetchval("SELECT code FROM registry.tps ORDER BY code LIMIT 1")
    existing = DeviceKey.generate(tps)
    out = tmp_path / "device.key.json"
    existing.save(out)
    before = out.read_bytes()
    result = await run_suara("device", "enroll", "--tps", tps, "--out", str(out), env=cli_env, cwd=tmp_path)
    assert result.returncode == 2
    assert str(out) in result.stderr and "never overwritten" in result.stderr
    assert out.read_bytes() == before
    assert DeviceKey.load(out).device_id == existing.device_id
    assert await db.fetchval("SELECT count(*) FROM tally.device") == 0  # refused before registering anything


async def test_device_enroll_to_an_unwritable_path_enrolls_nothing(
    db: asyncpg.Connection, cli_env: dict[str, str], tmp_path: Path
) -> None:
    tps = await db.fetchval("SELECT code FROM registry.tps ORDER BY code LIMIT 1")
    out = tmp_path / "missing-dir" / "device.key.json"
    result = await run_suara("device", "enroll", "--tps", tps, "--out", str(out), env=cli_env, cwd=tmp_path)
    assert result.returncode != 0
    assert not out.exists()
    assert await db.fetchval("SELECT count(*) FROM tally.device") == 0
    assert "Traceback" not in result.stderr


async def _refused_within(tally: Tally, request: tally_pb2.SubmitRequest, since: float, within_s: float) -> str:
    """Submit until tally answers PERMISSION_DENIED (its details), failing unless that comes `within_s` after
    loop time `since`. Each attempt is a real call: no sleep stands in for the revocation reaching tally."""
    loop = asyncio.get_running_loop()
    denied: list[str] = []

    async def refused() -> bool:
        try:
            await tally.stub.Submit(request, timeout=within_s)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.PERMISSION_DENIED, exc.details()
            denied.append(exc.details() or "")
            return True
        return False

    await poll_until(refused, "the revoked device refused", within_s=max(0.0, since + within_s - loop.time()))
    assert loop.time() - since < within_s
    return denied[0]


async def test_a_device_revoked_while_tally_serves_is_refused_within_a_second_and_raises_an_alarm(
    tally: Tally, cli_env: dict[str, str], tmp_path: Path
) -> None:
    station = await tally.station()
    choices = tally.contests["ppwp"]
    first = await tally.stub.Submit(signed(station.key, consistent_form(station.tps, "ppwp", choices, 1)))
    assert first.outcome == tally_pb2.OUTCOME_ACCEPTED  # tally now holds the key in its cache

    result = await run_suara(
        "device", "revoke", "--device-id", station.key.device_id, "--reason", "phone lost", env=cli_env, cwd=tmp_path
    )
    revoked_at = asyncio.get_running_loop().time()
    assert result.returncode == 0, result.stderr
    assert station.key.device_id in result.stdout and f"suara device enroll --tps {station.tps}" in result.stdout

    correction = signed(station.key, consistent_form(station.tps, "ppwp", choices, 2))
    details = await _refused_within(tally, correction, revoked_at, within_s=1.0)
    assert station.key.device_id in details and "revoked" in details

    with structlog.testing.capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError) as again:
        await tally.stub.Submit(correction)
    assert again.value.code() == grpc.StatusCode.PERMISSION_DENIED
    alarms = [e for e in logs if e["event"] == "revoked_device"]
    assert [(e["log_level"], e["device_id"], e["tps"]) for e in alarms] == [
        ("error", station.key.device_id, station.tps)
    ]
    stored = await tally.db.fetch(
        "SELECT tps, contest, version, detail->>'device_id' AS device_id FROM tally.alarm WHERE kind = 'revoked_device'"
    )
    assert {tuple(r) for r in stored} == {(station.tps, "ppwp", 2, station.key.device_id)}
    assert len(stored) >= 2  # one per refused form: the operator sees how often the key is still used
    assert await tally.db.fetchval("SELECT max(version) FROM tally.submission WHERE tps = $1", station.tps) == 1


async def test_a_lost_phone_is_replaced_by_a_new_key_for_the_same_tps_and_its_versions_continue(
    tally: Tally, cli_env: dict[str, str], tmp_path: Path
) -> None:
    old = tmp_path / "old.key.json"
    tps = tally.tps_codes.pop()
    choices = tally.contests["ppwp"]
    enrolled = await run_suara("device", "enroll", "--tps", tps, "--out", str(old), env=cli_env, cwd=tmp_path)
    assert enrolled.returncode == 0, enrolled.stderr
    old_key = DeviceKey.load(old)
    assert (await tally.stub.Submit(signed(old_key, consistent_form(tps, "ppwp", choices, 1)))).current_version == 1

    revoked = await run_suara("device", "revoke", "--key", str(old), env=cli_env, cwd=tmp_path)  # by its key file
    revoked_at = asyncio.get_running_loop().time()
    assert revoked.returncode == 0, revoked.stderr
    await _refused_within(tally, signed(old_key, consistent_form(tps, "ppwp", choices, 2)), revoked_at, 1.0)

    new = tmp_path / "new.key.json"
    replaced = await run_suara("device", "enroll", "--tps", tps, "--out", str(new), env=cli_env, cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr
    new_key = DeviceKey.load(new)
    assert new_key.device_id != old_key.device_id
    response = await tally.stub.Submit(signed(new_key, consistent_form(tps, "ppwp", choices, 2)))
    assert (response.outcome, response.current_version) == (tally_pb2.OUTCOME_ACCEPTED, 2)

    again = await run_suara("device", "revoke", "--key", str(old), env=cli_env, cwd=tmp_path)
    assert again.returncode == 1 and "revoked already" in again.stderr
    unknown = await run_suara("device", "revoke", "--device-id", "dev_unknown", env=cli_env, cwd=tmp_path)
    assert unknown.returncode == 1 and "no device 'dev_unknown'" in unknown.stderr

    log = await tally.db.fetch("SELECT actor, action, subject, detail->>'tps' AS tps FROM tally.admin_log ORDER BY id")
    assert [(r["action"], r["subject"], r["tps"]) for r in log] == [
        ("device.enroll", old_key.device_id, tps),
        ("device.revoke", old_key.device_id, tps),
        ("device.enroll", new_key.device_id, tps),
    ]
    assert all(r["actor"].startswith("cli:") for r in log)
