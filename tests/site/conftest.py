"""Fixtures of the site tests: the sample site, served by `suara publish serve`'s app, and the tools
(Debian's chromium, nginx) found or installed once, or the tests skip saying why."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.publish.http import serve_site
from tests.site.cdp import Browser, launch
from tests.site.sample import SampleSite, build_sample_site

CHROMIUM = "/usr/bin/chromium"
NGINX = "/usr/sbin/nginx"
_APT_LOCK = Path("/tmp/suara-tests-apt.lock")


def _installed_or_skip(executable: str, package: str) -> str:
    """The executable, installed from Debian on first need when we may (root, apt-get), else a skip."""
    if os.access(executable, os.X_OK):
        return executable
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{executable} is missing: install the Debian package {package} (needs root and apt-get)")
    # One installer at a time: xdist workers would otherwise fight over dpkg's lock.
    with _APT_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not os.access(executable, os.X_OK):
                env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
                subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
                subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", package], env=env, check=True)
        except subprocess.CalledProcessError as err:
            pytest.skip(f"{executable} is missing and `apt-get install {package}` failed: {err}")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if not os.access(executable, os.X_OK):
        pytest.skip(f"{executable} is missing after installing {package}")
    return executable


@pytest.fixture(scope="session")
def chromium() -> str:
    return _installed_or_skip(CHROMIUM, "chromium")


@pytest.fixture(scope="session")
def nginx() -> str:
    return _installed_or_skip(NGINX, "nginx-light")


@pytest.fixture(scope="session")
def artifacts(repo_root: Path) -> Path:
    path = repo_root / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def sample(tmp_path: Path) -> SampleSite:
    return build_sample_site(tmp_path / "site")


@pytest.fixture
async def site_url(sample: SampleSite) -> AsyncIterator[str]:
    async with serve_site(sample.site_dir) as url:
        yield url


@pytest.fixture
async def browser(chromium: str, tmp_path: Path) -> AsyncIterator[Browser]:
    async with launch(chromium, tmp_path / "chromium") as b:
        yield b


@pytest.fixture
def deploy_dir(repo_root: Path) -> Path:
    return repo_root / "deploy" / "nginx"
