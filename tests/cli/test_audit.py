"""`suara audit verify` on a chain tally wrote, then on one rewritten behind its back."""

from __future__ import annotations

import json
from pathlib import Path

from suara.v1 import tally_pb2
from tests.support.factories import consistent_form, signed
from tests.support.processes import run_suara
from tests.support.tally import Tally


async def _submit(tally: Tally, stations: int) -> None:
    """Each station sends a form and then a correction: two chain records per station."""
    for _ in range(stations):
        st = await tally.station()
        for version in (1, 2):
            form = consistent_form(st.tps, "ppwp", tally.contests["ppwp"], version)
            response = await tally.stub.Submit(signed(st.key, form))
            assert response.outcome == tally_pb2.OUTCOME_ACCEPTED


async def test_verify_reports_an_intact_chain_then_names_a_tampered_record(
    tally: Tally, cli_env: dict[str, str], tmp_path: Path
) -> None:
    await _submit(tally, 3)
    records = await tally.count("submission")  # the oracle: what the table holds
    assert records > 0

    ok = await run_suara("audit", "verify", env=cli_env, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    head = await tally.db.fetchval("SELECT hash FROM tally.chain_head")
    assert f"chain OK: {records:,} records, head {bytes(head).hex()}" in ok.stdout

    ok_json = await run_suara("audit", "verify", "--json", env=cli_env, cwd=tmp_path)
    assert ok_json.returncode == 0
    report = json.loads(ok_json.stdout)
    assert (report["ok"], report["records"], report["problems"]) == (True, records, [])
    assert report["head_hash"] == bytes(head).hex()

    # Rewrite one stored form's bytes, as someone with write access to the database could.
    position = records // 2 + 1
    payload = await tally.db.fetchval("SELECT payload FROM tally.submission WHERE chain_position = $1", position)
    forged = bytearray(payload)
    forged[-1] ^= 1
    await tally.db.execute(
        "UPDATE tally.submission SET payload = $1 WHERE chain_position = $2", bytes(forged), position
    )

    broken = await run_suara("audit", "verify", env=cli_env, cwd=tmp_path)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "chain BROKEN" in broken.stdout and f"{records:,} records" in broken.stdout
    problem_lines = [line for line in broken.stdout.splitlines() if line.startswith("  - ")]
    assert problem_lines and all(f"position {position} " in line for line in problem_lines)

    broken_json = await run_suara("audit", "verify", "--json", env=cli_env, cwd=tmp_path)
    assert broken_json.returncode == 1
    report = json.loads(broken_json.stdout)
    assert report["ok"] is False and report["records"] == records
    assert report["problems"] and all(f"position {position} " in p for p in report["problems"])


async def test_verify_of_an_empty_chain_is_ok(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = await run_suara("audit", "verify", "--json", env=cli_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["ok"], report["records"], report["problems"]) == (True, 0, [])
