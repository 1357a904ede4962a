"""deploy/compose.yaml, checked without a Docker engine (none runs here): every suara variable it sets is
a real setting with a valid value, every command a real `suara` command, every long-running service has
a health check, and the certificate job, run for real, makes every file the services are pointed at
(and keeps the CA's key out of what they mount)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from cli.embedded import free_port
from tests.deploy.checks import (
    DEPLOY,
    check_settings,
    compose_interpolate,
    interpolated,
    is_suara_variable,
    parse_suara,
    suara_lines,
)
from tests.support.databases import as_service
from tests.support.factories import TEST_ELECTION
from tests.support.processes import SUARA, Child, run_suara, suara_env
from tests.support.waiting import STARTUP_S, poll_until

COMPOSE = DEPLOY / "compose.yaml"
SUARA_IMAGE = "suara:"
STATE = "/var/lib/suara"  # the image's SUARA_DATA_DIR (deploy/Dockerfile)
# Written by the metrics work of issue 16 beside this file; checked once it is there.
PROMETHEUS_DIR = DEPLOY / "prometheus"


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
            commands = list(suara_lines(compose_interpolate(script, {"ELECTION_ID": "an-election"})))
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
                if path == PROMETHEUS_DIR and not path.exists():
                    continue
                assert path.exists(), f"service {name} mounts {source}, which does not exist"
            else:
                assert source in declared, f"service {name} mounts the undeclared volume {source}"
    # Every value compose takes from deploy/.env is in the example an operator copies.
    example = {line.split("=")[0] for line in (DEPLOY / "env.example").read_text().splitlines() if "=" in line}
    assert interpolated(COMPOSE.read_text()) <= example


def test_the_certificate_job_makes_what_the_services_read(compose: dict[str, Any], tmp_path: Path) -> None:
    """The pki job, run for real (twice: a second run, after a revocation say, keeps the CA and copies again),
    makes every file the services are pointed at and keeps the CA's key out of what they mount."""
    state = tmp_path / "state"
    _run_pki_job(compose, state)
    _run_pki_job(compose, state)

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


def _run_pki_job(compose: dict[str, Any], state: Path) -> None:
    """The pki job's script with the real `suara`, in a directory standing for the image's state."""
    for d in ("pki", "certs"):
        (state / d).mkdir(parents=True, exist_ok=True)
    script = _script(compose["services"]["pki"])
    assert script is not None
    # As compose runs it: the election from deploy/.env (here the test registry's), `$$` a shell `$`.
    script = compose_interpolate(script, {"ELECTION_ID": TEST_ELECTION})
    script = script.replace(STATE, str(state)).replace("suara ", f"{SUARA} ")
    done = subprocess.run(
        ["sh", "-c", script], env=suara_env(SUARA_DATA_DIR=state), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
async def test_the_services_come_up_as_compose_wires_them(compose: dict[str, Any], db_url: str, tmp_path: Path) -> None:
    """aggregate, tally and publish as real processes with compose's own environment and commands, a
    container's paths and host names mapped onto this machine (every server certificate names
    localhost), until compose's own health check passes for each and publish has written the site:
    which takes every certificate and client bundle the pki job made, over mutual TLS."""
    state = tmp_path / "state"
    await asyncio.to_thread(_run_pki_job, compose, state)
    defaults = (("tally", 50051), ("tally", 50061), ("aggregate", 50052), ("aggregate", 50062), ("publish", 50053))
    ports = {(host, port): str(free_port()) for host, port in defaults}
    listen = {
        "SUARA_TALLY_PORT": ports["tally", 50051],
        "SUARA_TALLY_INTERNAL_PORT": ports["tally", 50061],
        "SUARA_AGGREGATE_PORT": ports["aggregate", 50052],
        "SUARA_AGGREGATE_INTERNAL_PORT": ports["aggregate", 50062],
        "SUARA_PUBLISH_PORT": ports["publish", 50053],
    }
    base = {k: v for k, v in os.environ.items() if not is_suara_variable(k)}

    def env_of(name: str) -> dict[str, str]:
        env = {**base, **listen, "SUARA_DATA_DIR": str(state)}
        for var, value in compose["services"][name]["environment"].items():
            value = str(value).replace(STATE, str(state))
            if re.fullmatch(r"SUARA_(TALLY|AGGREGATE|PUBLISH)_DATABASE_URL", var):
                value = as_service(db_url, var.split("_")[1].lower())  # the test server's login in that role
            elif re.fullmatch(r"SUARA_\w+_ADDRESS", var):
                host, port = value.split(":")
                value = f"localhost:{ports[host, int(port)]}"
            env[var] = value
        return env

    children = []
    try:
        for name in ("aggregate", "tally", "publish"):  # compose's depends_on order
            service = compose["services"][name]
            env = env_of(name)
            child = await Child.spawn(*service["command"], env=env, cwd=tmp_path)
            children.append(child)
            health = service["healthcheck"]["test"][2:]  # after CMD suara

            async def healthy(env: dict[str, str] = env, health: list[str] = health) -> bool:
                return (await run_suara(*health, env=env, cwd=tmp_path)).returncode == 0

            await poll_until(healthy, f"{name}'s health check passing", STARTUP_S, child.assert_alive,
                             detail=child.log.text, interval_s=0.5)  # fmt: skip
        site = state / "site"
        publish = children[-1]
        await publish.log.wait_for_event("published", STARTUP_S)
        assert (site / "index.html").exists() and (site / "suara" / "snapshot.json").exists()
        tally = children[1]
        await tally.log.wait_for_event("relay_active", STARTUP_S)  # its writer bundle loaded
        for child in children:
            child.assert_alive()
            assert not [e for e in child.log.events() if e.get("level") == "error"], child.log.text()
    finally:
        for child in reversed(children):
            await child.kill()


def test_prometheus_scrapes_every_service_at_its_metrics_port(compose: dict[str, Any]) -> None:
    """compose-targets/ stands in for prometheus.yml's targets/: a job per service, each target the
    compose service of that name at the metrics port its settings give it."""
    import json

    from suara.runtime.settings import Settings

    services = _suara_services(compose)
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./prometheus/compose-targets:/etc/prometheus/targets:ro" in mounts
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    globs = {job["job_name"]: job["file_sd_configs"][0]["files"][0] for job in config["scrape_configs"]}
    for service in ("tally", "aggregate", "publish"):
        target_file = PROMETHEUS_DIR / "compose-targets" / f"suara-{service}.json"
        assert Path(f"targets/{target_file.name}").match(globs[f"suara-{service}"]), service
        (group,) = json.loads(target_file.read_text())
        environment = services[service].get("environment") or {}
        settings = Settings.from_env({k: str(v) for k, v in environment.items() if k.startswith("SUARA_")})
        assert environment.get("SUARA_METRICS", "on") != "off", service
        assert group["targets"] == [f"{service}:{getattr(settings, service).metrics_port}"], service
        assert "service" not in group.get("labels", {})  # a target label would shadow the metrics' own
