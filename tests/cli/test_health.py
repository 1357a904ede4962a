"""`suara health` as a container's health check runs it: the installed script against a running tally.

The oracle is the server's own health state, which each test sets (tests/support/tally.py's rig serves
TLS with the suite's PKI, whose certificates name 127.0.0.1 and localhost).
"""

from __future__ import annotations

from pathlib import Path

from cli.embedded import free_port
from suara.client import service_names
from tests.support.processes import run_suara, suara_env
from tests.support.tally import Tally


async def test_serving_by_address_and_by_name(tally: Tally, tmp_path: Path) -> None:
    env = suara_env(SUARA_TALLY_PORT=str(tally.app.port))
    by_address = await run_suara("health", f"127.0.0.1:{tally.app.port}", env=env, cwd=tmp_path)
    assert by_address.returncode == 0, by_address
    assert "SERVING" in by_address.stdout and "NOT_SERVING" not in by_address.stdout
    # The name asks localhost at SUARA_TALLY_PORT about tally's own service, as the image's HEALTHCHECK does.
    by_name = await run_suara("health", "tally", env=env, cwd=tmp_path)
    assert by_name.returncode == 0, by_name
    assert f"localhost:{tally.app.port} ({service_names.TALLY.full_name}): SERVING" in by_name.stdout


async def test_not_serving_exits_1(tally: Tally, tmp_path: Path) -> None:
    env = suara_env(SUARA_TALLY_PORT=str(tally.app.port))
    await tally.app.server.set_serving(False)  # what tally does when its database goes away, or on SIGTERM
    done = await run_suara("health", "tally", env=env, cwd=tmp_path)
    assert done.returncode == 1, done
    assert "NOT_SERVING" in done.stdout
    await tally.app.server.set_serving(True)
    assert (await run_suara("health", "tally", env=env, cwd=tmp_path)).returncode == 0


async def test_unknown_service_nothing_listening_and_wrong_tls_exit_1(tally: Tally, tmp_path: Path) -> None:
    env = suara_env()
    address = f"127.0.0.1:{tally.app.port}"
    unknown = await run_suara("health", address, "--service", "suara.v1.NoSuchService", env=env, cwd=tmp_path)
    assert unknown.returncode == 1, unknown
    assert "does not know this service" in unknown.stdout

    nobody = await run_suara("health", f"127.0.0.1:{free_port()}", "--timeout", "2", env=env, cwd=tmp_path)
    assert nobody.returncode == 1, nobody
    assert "no answer: UNAVAILABLE" in nobody.stdout

    # Plaintext against a TLS listener is no answer either, never a false SERVING.
    plain = await run_suara("health", address, "--insecure", "--timeout", "2", env=env, cwd=tmp_path)
    assert plain.returncode == 1, plain
    assert "no answer" in plain.stdout


async def test_without_a_ca_it_says_what_is_missing(tmp_path: Path) -> None:
    env = {k: v for k, v in suara_env().items() if k != "SUARA_CA_FILE"}
    done = await run_suara("health", "127.0.0.1:1", env=env, cwd=tmp_path)
    assert done.returncode == 2, done
    assert "SUARA_CA_FILE" in done.stderr
