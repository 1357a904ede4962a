"""`suara outbox status|flush` as an officer runs them: a form `suara submit` kept while tally was away,
then sent when it is back."""

from __future__ import annotations

import json
from pathlib import Path

from services.tally.credentials import enroll_device
from suara.v1 import tally_pb2
from tests.cli.files import key_path, write_form, write_key
from tests.support.factories import jpeg
from tests.support.ports import closed_port
from tests.support.processes import run_suara
from tests.support.tally import Tally


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
    (submission,) = (await tally.admin.ListSubmissions(tally_pb2.ListSubmissionsRequest(tps=tps))).submissions
    assert len(submission.photo_sha256) == 1

    after = json.loads((await run_suara("outbox", "status", "--json", env=cli_env, cwd=tmp_path)).stdout)
    assert after["counts"]["sent"] == 1 and after["oldest_pending"] is None
    text = await run_suara("outbox", "status", env=cli_env, cwd=tmp_path)
    assert "pending 0, sent 1, rejected 0" in text.stdout
