"""`suara admin init|revoke`: the credential file it writes is private and opens EnrollDevice on a tally
in plaintext mode (SUARA_INSECURE, debugging only; under TLS an admin is known by a certificate, `suara
pki`), until it is revoked: then every running tally refuses it within a second."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import grpc
import pytest

from suara.election.signing import DeviceKey, device_id_for
from suara.runtime.auth.admin import AdminCredential
from suara.v1 import tally_pb2
from tests.cli.files import PRIVATE, file_mode, files_in
from tests.support.factories import consistent_form, signed
from tests.support.processes import run_suara
from tests.support.tally import Tally
from tests.support.waiting import poll_until


async def test_admin_init_writes_a_private_credential_that_enroll_device_accepts(
    insecure_tally: Tally, cli_env: dict[str, str], tmp_path: Path
) -> None:
    tally = insecure_tally
    out = tmp_path / "secrets" / "admin.key.json"  # the directory does not exist yet
    result = await run_suara("admin", "init", "--out", str(out), "--label", "ops desk", env=cli_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert file_mode(out) == PRIVATE
    credential = AdminCredential.load(out)
    assert credential.id in result.stdout and str(out) in result.stdout
    assert credential.token not in result.stdout + result.stderr  # the secret is only in the file
    stored = await tally.db.fetchrow(
        "SELECT label, token_sha256 FROM tally.admin_credential WHERE id = $1", credential.id
    )
    assert stored is not None and stored["label"] == "ops desk"
    # Only the token's SHA-256 is in the database, as `admin init --help` says.
    assert bytes(stored["token_sha256"]) == hashlib.sha256(credential.token.encode()).digest()

    tps = tally.tps_codes.pop()
    key = DeviceKey.generate(tps)
    request = tally_pb2.EnrollDeviceRequest(tps=tps, public_key=key.public_key, label="phone 1")
    response = await tally.stub.EnrollDevice(request, metadata=(("authorization", f"Bearer {credential.token}"),))
    assert (response.device_id, response.tps) == (key.device_id, tps)
    assert await tally.db.fetchval("SELECT tps FROM tally.device WHERE device_id = $1", key.device_id) == tps
    # The device that credential enrolled can submit right away.
    submitted = await tally.stub.Submit(signed(key, consistent_form(tps, "ppwp", tally.contests["ppwp"])))
    assert submitted.outcome == tally_pb2.OUTCOME_ACCEPTED


async def test_enroll_device_refuses_a_missing_or_unknown_token(
    insecure_tally: Tally, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """The contrast to the test above: it is the token from the file that opens EnrollDevice."""
    tally = insecure_tally
    out = tmp_path / "admin.key.json"
    assert (await run_suara("admin", "init", "--out", str(out), env=cli_env, cwd=tmp_path)).returncode == 0
    token = AdminCredential.load(out).token
    tps = tally.tps_codes.pop()
    request = tally_pb2.EnrollDeviceRequest(tps=tps, public_key=DeviceKey.generate(tps).public_key)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await tally.stub.EnrollDevice(request)
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as wrong:
        await tally.stub.EnrollDevice(request, metadata=(("authorization", f"Bearer {token[::-1]}"),))
    assert wrong.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await tally.db.fetchval("SELECT count(*) FROM tally.device WHERE tps = $1", tps) == 0


async def test_admin_init_without_out_writes_into_the_data_dir(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = await run_suara("admin", "init", env=cli_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    default = Path(cli_env["SUARA_DATA_DIR"]) / "admin.key.json"  # as `admin init --help` documents
    assert file_mode(default) == PRIVATE
    assert AdminCredential.load(default).id in result.stdout


async def test_admin_init_never_leaves_the_token_in_a_readable_file(cli_env: dict[str, str], tmp_path: Path) -> None:
    """An --out that already exists world-readable must not end up holding the token with that mode."""
    out = tmp_path / "admin.key.json"
    out.write_text("placeholder\n")
    out.chmod(0o644)
    refused = await run_suara("admin", "init", "--out", str(out), env=cli_env, cwd=tmp_path)
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert out.read_text() == "placeholder\n"
    forced = await run_suara("admin", "init", "--out", str(out), "--force", env=cli_env, cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert file_mode(out) == PRIVATE
    assert AdminCredential.load(out).id in forced.stdout
    assert files_in(tmp_path) == [out]  # no temporary copy of the secret left beside it


async def test_an_admin_credential_revoked_while_tally_serves_is_refused_within_a_second(
    insecure_tally: Tally, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Bearer tokens are plaintext mode's proof; an admin certificate is revoked with `suara pki revoke`."""
    tally = insecure_tally
    out = tmp_path / "admin.key.json"
    assert (await run_suara("admin", "init", "--out", str(out), env=cli_env, cwd=tmp_path)).returncode == 0
    credential = AdminCredential.load(out)
    bearer = (("authorization", f"Bearer {credential.token}"),)

    def enroll() -> tally_pb2.EnrollDeviceRequest:
        tps = tally.tps_codes.pop()
        return tally_pb2.EnrollDeviceRequest(tps=tps, public_key=DeviceKey.generate(tps).public_key)

    first = enroll()
    await tally.stub.EnrollDevice(first, metadata=bearer)  # tally now holds the credential in its cache

    revoked = await run_suara("admin", "revoke", "--key", str(out), "--reason", "leaked", env=cli_env, cwd=tmp_path)
    loop = asyncio.get_running_loop()
    revoked_at = loop.time()
    assert revoked.returncode == 0, revoked.stderr
    assert credential.id in revoked.stdout

    async def refused() -> bool:
        try:
            await tally.stub.EnrollDevice(enroll(), metadata=bearer, timeout=1.0)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.PERMISSION_DENIED, exc.details()
            return True
        return False

    await poll_until(refused, "the revoked admin credential refused", within_s=max(0.0, revoked_at + 1.0 - loop.time()))
    assert loop.time() - revoked_at < 1.0

    again = await run_suara("admin", "revoke", credential.id, env=cli_env, cwd=tmp_path)
    assert again.returncode == 1 and credential.id in again.stderr
    log = await tally.db.fetch("SELECT actor, action, subject, detail FROM tally.admin_log ORDER BY id")
    assert [(r["action"], r["subject"]) for r in log][:3] == [
        ("admin.issue", credential.id),
        ("device.enroll", device_id_for(first.public_key)),  # the RPC records the credential that called it
        ("admin.revoke", credential.id),
    ]
    assert log[1]["actor"] == credential.id
    assert log[0]["actor"].startswith("cli:") and log[2]["actor"].startswith("cli:")
