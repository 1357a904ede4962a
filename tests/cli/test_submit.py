"""`suara submit` as an officer runs it: the real command in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path

from suara.v1 import tally_pb2
from tests.cli.files import key_path, write_form, write_key
from tests.support.processes import run_suara
from tests.support.tally import Tally


async def test_submit_online_prints_the_receipt_and_a_second_submit_changes_nothing(
    tally: Tally, cli_env: dict[str, str], tmp_path: Path
) -> None:
    station = await tally.station()
    station.key.save(key_path(tmp_path))
    form = write_form(tally, station.tps, tmp_path / "form.json")
    args = ("submit", str(form), "--key", str(key_path(tmp_path)), "--target", f"127.0.0.1:{tally.app.port}")

    first = await run_suara(*args, env=cli_env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (submission,) = (await tally.admin.ListSubmissions(tally_pb2.ListSubmissionsRequest(tps=station.tps))).submissions
    assert "ACCEPTED" in first.stdout and submission.receipt.submission_id in first.stdout
    assert f"chain position {submission.receipt.chain_position}" in first.stdout

    second = await run_suara(*args, "--json", env=cli_env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    entry = json.loads(second.stdout)
    assert entry["state"] == "sent" and entry["receipt"]["submission_id"] == submission.receipt.submission_id
    assert await tally.count("submission") == 1


async def test_a_rejected_form_exits_non_zero_with_the_reason(
    tally: Tally, cli_env: dict[str, str], tmp_path: Path
) -> None:
    tps = tally.tps_codes.pop()
    write_key(tps, key_path(tmp_path))  # never enrolled
    form = write_form(tally, tps, tmp_path / "form.json")
    result = await run_suara(
        "submit", str(form), "--key", str(key_path(tmp_path)), "--target", f"127.0.0.1:{tally.app.port}",
        env=cli_env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert "REJECTED by tally (UNAUTHENTICATED)" in result.stdout and "suara device enroll" in result.stdout


async def test_a_bad_form_file_names_every_problem_and_touches_nothing(
    tally: Tally, cli_env: dict[str, str], tmp_path: Path
) -> None:
    write_key(tally.tps_codes[0], key_path(tmp_path))
    bad = tmp_path / "form.json"
    bad.write_text(json.dumps({"tps": 1101, "contest": "ppwp", "votes": {}}))
    result = await run_suara("submit", str(bad), "--key", str(key_path(tmp_path)), env=cli_env, cwd=tmp_path)
    assert result.returncode == 2
    assert "tps: must be a string" in result.stderr and "version: missing" in result.stderr
    assert not (Path(cli_env["SUARA_DATA_DIR"]) / "outbox.sqlite3").exists()
