"""`suara submit` and `suara outbox status|flush` as an officer runs them: the real command in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path

from services.tally.credentials import enroll_device
from suara.election.form import form_to_dict
from suara.election.signing import DeviceKey
from suara.v1 import tally_pb2
from tests.support.factories import consistent_form, jpeg
from tests.support.ports import closed_port
from tests.support.processes import run_suara
from tests.support.tally import Tally


def write_form(tally: Tally, tps: str, path: Path, version: int = 1) -> Path:
    path.write_text(json.dumps(form_to_dict(consistent_form(tps, "ppwp", tally.contests["ppwp"], version))))
    return path


def key_path(tmp_path: Path) -> Path:
    return tmp_path / "device.key.json"


def write_key(tps: str, path: Path) -> DeviceKey:
    key = DeviceKey.generate(tps)
    key.save(path)
    return key


async def test_offline_submit_is_kept_then_flushed_when_tally_is_back(
    tally: Tally, cli_env: dict[str, str], tmp_path: Path
) -> None:
    tps = tally.tps_codes.pop()
    key = write_key(tps, key_path(tmp_path))
    form = write_form(tally, tps, tmp_path / "form.json")
    (tmp_path / "p1.jpg").write_bytes(jpeg(b"page 1"))
    offline = f"127.0.0.1:{closed_port()}"

    result = await run_suara(
        "submit", str(form), "--key", str(key_path(tmp_path)), "--photo", "p1.jpg", "--target", offline,
        env=cli_env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "saved in the outbox; will be sent when the network is back (suara outbox flush)" in result.stdout
    assert (Path(cli_env["SUARA_DATA_DIR"]) / "outbox.sqlite3").exists()  # the default outbox

    status = await run_suara("outbox", "status", "--json", env=cli_env, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["counts"] == {"pending": 1, "sent": 0, "rejected": 0, "replaced": 0}
    assert shown["oldest_pending"]["tps"] == tps and shown["oldest_pending"]["photos"] == 1
    assert shown["oldest_pending"]["last_code"] == "UNAVAILABLE"

    still = await run_suara("outbox", "flush", "--target", offline, "--deadline", "0.2", env=cli_env, cwd=tmp_path)
    assert still.returncode == 3 and "still pending" in still.stdout and "safe in the outbox" in still.stdout

    await enroll_device(tally.db, key.device_id, tps, key.public_key, "test")
    online = f"127.0.0.1:{tally.app.port}"
    flushed = await run_suara("outbox", "flush", "--target", online, env=cli_env, cwd=tmp_path)
    assert flushed.returncode == 0, flushed.stdout + flushed.stderr
    assert f"sent TPS {tps} ppwp v1: ACCEPTED" in flushed.stdout
    (submission,) = (await tally.stub.ListSubmissions(tally_pb2.ListSubmissionsRequest(tps=tps))).submissions
    assert len(submission.photo_sha256) == 1

    after = json.loads((await run_suara("outbox", "status", "--json", env=cli_env, cwd=tmp_path)).stdout)
    assert after["counts"]["sent"] == 1 and after["oldest_pending"] is None
    text = await run_suara("outbox", "status", env=cli_env, cwd=tmp_path)
    assert "pending 0, sent 1, rejected 0" in text.stdout


async def test_submit_online_prints_the_receipt_and_a_second_submit_changes_nothing(
    tally: Tally, cli_env: dict[str, str], tmp_path: Path
) -> None:
    station = await tally.station()
    station.key.save(key_path(tmp_path))
    form = write_form(tally, station.tps, tmp_path / "form.json")
    args = ("submit", str(form), "--key", str(key_path(tmp_path)), "--target", f"127.0.0.1:{tally.app.port}")

    first = await run_suara(*args, env=cli_env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (submission,) = (await tally.stub.ListSubmissions(tally_pb2.ListSubmissionsRequest(tps=station.tps))).submissions
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
