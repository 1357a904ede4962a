"""`suara device enroll`: the key file it writes is private and works against tally."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from suara.election.signing import DeviceKey
from suara.v1 import tally_pb2
from tests.cli.files import PRIVATE, file_mode, files_in
from tests.support.factories import TEST_ELECTION, consistent_form, signed
from tests.support.processes import run_suara
from tests.support.tally import Tally


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
