"""deploy/compose.yaml, checked without a Docker engine (none runs here): every suara variable it sets is
a real setting with a valid value, every command a real `suara` command, every long-running service has
a health check, and the certificate job, run for real, makes every file the services are pointed at
(and keeps the CA's key out of what they mount)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from tests.deploy.checks import DEPLOY, check_settings, interpolated, parse_suara, suara_lines
from tests.support.processes import SUARA, suara_env

COMPOSE = DEPLOY / "compose.yaml"
SUARA_IMAGE = "suara:"
STATE = "/var/lib/suara"  # the image's SUARA_DATA_DIR (deploy/Dockerfile)
# Written by the metrics work of issue 16 beside this file; checked once it is there.
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # the x- anchors merge as compose merges them
    return loaded


def _suara_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if str(s.get("image", "")).startswith(SUARA_IMAGE)}


def _script(service: dict[str, Any]) -> str | None:
    """The script of an `sh -c` service, None for one whose command is the entrypoint's arguments."""
    if service.get("entrypoint") == ["sh", "-c"]:
        script: str = service["command"][0]
        return script
    return None


def test_every_suara_variable_is_a_real_setting_with_a_valid_value(compose: dict[str, Any]) -> None:
    services = _suara_services(compose)
    assert {"tally", "aggregate", "publish", "migrate", "pki"} <= set(services)
    for name, service in services.items():
        check_settings(service.get("environment", {}), f"service {name}")
    # The other images' variables must not be meant for suara either (a typo'd copy, say).
    for name, service in compose["services"].items():
        if name not in services:
            assert not any(k.startswith("SUARA_") for k in service.get("environment", {})), name


def test_every_command_is_a_real_suara_command(compose: dict[str, Any]) -> None:
    serve = {"tally": ("tally", "serve"), "aggregate": ("aggregate", "serve"), "publish": ("publish", "run")}
    for name, service in _suara_services(compose).items():
        script = _script(service)
        if script is None:
            args = parse_suara(service["command"], f"service {name}")
            if name in serve:
                assert (args.command, getattr(args, f"{args.command}_command")) == serve[name]
        else:
            commands = list(suara_lines(script))
            assert commands, f"service {name}: a script without a suara command"
            for argv in commands:
                parse_suara(argv, f"service {name}")
        health = service.get("healthcheck", {}).get("test")
        if health and health[:2] == ["CMD", "suara"]:
            parse_suara(health[2:], f"service {name} healthcheck")


def test_long_running_services_have_health_checks(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        check = service.get("healthcheck", {})
        if service.get("restart") == "no":  # a one-shot job: done when it exits 0
            continue
        assert check.get("test") and not check.get("disable"), f"service {name} has no health check"
    # Each service's check asks about that service (the image's default asks about tally).
    for name in ("tally", "aggregate", "publish"):
        assert compose["services"][name]["healthcheck"]["test"][:4] == ["CMD", "suara", "health", name]


def test_files_volumes_and_passwords_are_all_there(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                path = (DEPLOY / source).resolve()
                if path == PROMETHEUS_CONFIG and not path.exists():
                    continue
                assert path.exists(), f"service {name} mounts {source}, which does not exist"
            else:
                assert source in declared, f"service {name} mounts the undeclared volume {source}"
    # Every value compose takes from deploy/.env is in the example an operator copies.
    example = {line.split("=")[0] for line in (DEPLOY / "env.example").read_text().splitlines() if "=" in line}
    assert interpolated(COMPOSE.read_text()) <= example


def test_the_certificate_job_makes_what_the_services_read(compose: dict[str, Any], tmp_path: Path) -> None:
    """Run the pki job's script with the real `suara`, in a directory standing for the image's state."""
    state = tmp_path / "state"
    for d in ("pki", "certs"):
        (state / d).mkdir(parents=True)
    script = _script(compose["services"]["pki"])
    assert script is not None
    script = script.replace(STATE, str(state)).replace("suara ", f"{SUARA} ")
    env = suara_env(SUARA_DATA_DIR=state)
    for _ in range(2):  # the second run (after a revocation, say) keeps the CA and copies again
        done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr

    certs = state / "certs"
    assert not list(certs.glob("ca.key")), "the CA's key must stay in the pki volume"
    pointed = {
        (name, var): value
        for name, service in _suara_services(compose).items()
        for var, value in service.get("environment", {}).items()
        if str(value).startswith(f"{STATE}/certs/")
    }
    assert pointed
    for (name, var), value in pointed.items():
        assert Path(value.replace(STATE, str(state))).is_file(), f"service {name}: {var}={value} is not made"
    # Each server certificate names the compose service the others dial, and localhost (its health check).
    for name in ("tally", "aggregate", "publish"):
        cert = x509.load_pem_x509_certificate((certs / f"{name}.crt").read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert {name, "localhost"} <= set(names.get_values_for_type(x509.DNSName))
        address = compose["services"][name]["environment"]
        for var, value in address.items():
            if re.fullmatch(r"SUARA_\w+_ADDRESS", var):
                assert value.split(":")[0] in compose["services"], f"{name}: {var} dials an unknown host"
