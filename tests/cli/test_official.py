"""`suara official enroll|revoke`: a recap official's key, bound to one area and role, until revoked."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import asyncpg
import grpc
import pytest

from suara.election.signing import OfficialKey
from suara.v1 import aggregate_pb2
from tests.support.aggregate import start_aggregate
from tests.support.factories import TEST_ELECTION
from tests.support.processes import run_suara


async def test_enroll_writes_a_private_key_bound_to_the_area(
    cli_env: dict[str, str], db: asyncpg.Connection, tmp_path: Path
) -> None:
    area = await db.fetchval("SELECT code FROM registry.area WHERE level = 3 ORDER BY code LIMIT 1")
    out = tmp_path / "ppk.key.json"
    result = await run_suara(
        "official", "enroll", "--area", area, "--role", "ppk", "--out", str(out), env=cli_env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    key = OfficialKey.load(out)
    assert key.election_id == TEST_ELECTION  # the registry's: the official signs it into every recap
    row = await db.fetchrow(
        "SELECT area, role, public_key FROM aggregate.official WHERE official_id = $1", key.official_id
    )
    assert (row["area"], row["role"], bytes(row["public_key"])) == (area, "ppk", key.public_key)


async def test_a_role_that_does_not_fit_the_area_is_refused(
    cli_env: dict[str, str], db: asyncpg.Connection, tmp_path: Path
) -> None:
    province = await db.fetchval("SELECT code FROM registry.area WHERE level = 1 ORDER BY code LIMIT 1")
    result = await run_suara("official", "enroll", "--area", province, "--role", "ppk", env=cli_env, cwd=tmp_path)
    assert result.returncode == 2 and "ppk" in result.stderr
    assert not any(p.name.endswith(".key.json") for p in await asyncio.to_thread(lambda: list(tmp_path.iterdir())))
    assert await db.fetchval("SELECT count(*) FROM aggregate.official") == 0


async def test_a_revoked_official_is_refused_by_a_running_aggregate_and_the_log_says_who(
    cli_env: dict[str, str], db: asyncpg.Connection, db_url: str, tmp_path: Path
) -> None:
    area = await db.fetchval("SELECT left(code, 6) FROM registry.tps ORDER BY code LIMIT 1")
    choices = [
        r["id"] for r in await db.fetch("SELECT id FROM registry.choice WHERE contest = 'ppwp' ORDER BY nomor_urut")
    ]
    out = tmp_path / "ppk.key.json"
    enrolled = await run_suara(
        "official", "enroll", "--area", area, "--role", "ppk", "--out", str(out), env=cli_env, cwd=tmp_path
    )
    assert enrolled.returncode == 0, enrolled.stderr
    key = OfficialKey.load(out)

    def recap(version: int) -> aggregate_pb2.SubmitRecapRequest:
        totals = aggregate_pb2.Totals(votes=dict.fromkeys(choices, version), suara_sah=version * len(choices))
        form = aggregate_pb2.RecapForm(
            area=area, contest="ppwp", version=version, totals=totals, election_id=key.election_id
        )  # the election the key file names
        payload = form.SerializeToString()
        signed = aggregate_pb2.SignedRecap(payload=payload, signature=key.sign(payload), official_id=key.official_id)
        return aggregate_pb2.SubmitRecapRequest(recap=signed)

    aggregate = await start_aggregate(db_url, db)
    try:
        assert (await aggregate.stub.SubmitRecap(recap(1))).outcome == aggregate_pb2.RECAP_OUTCOME_ACCEPTED
        revoked = await run_suara(
            "official", "revoke", "--key", str(out), "--reason", "key lost", env=cli_env, cwd=tmp_path
        )
        assert revoked.returncode == 0, revoked.stderr
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # looked up on every recap: refused at once
            await aggregate.stub.SubmitRecap(recap(2))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert key.official_id in (refused.value.details() or "")
    finally:
        await aggregate.close()
    again = await run_suara("official", "revoke", "--official-id", key.official_id, env=cli_env, cwd=tmp_path)
    assert again.returncode == 1 and key.official_id in again.stderr
    log = await db.fetch("SELECT actor, action, subject, detail->>'area' AS area FROM aggregate.admin_log ORDER BY id")
    assert [(r["action"], r["subject"], r["area"]) for r in log] == [
        ("official.enroll", key.official_id, area),
        ("official.revoke", key.official_id, area),
    ]
    assert all(r["actor"].startswith("cli:") for r in log)
