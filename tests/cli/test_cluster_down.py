"""`suara cluster down` after its `cluster up` was SIGKILLed: every process cluster.json lists that is
still the cluster's is killed; a process that merely got a listed pid back from the kernel is not.

Real processes stand in for the hosts' (the whole cluster runs in tests/cluster/test_cluster_up.py):
one started with the cluster's SUARA_DATA_DIR in its environment, as the services are, one named by
its command line, as etcd, Patroni and the servers are, and one of nobody's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def sleepers(tmp_path: Path) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    data = tmp_path / "cluster"
    data.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUARA_")}
    procs = {
        "service": subprocess.Popen(["sleep", "300"], env={**env, "SUARA_DATA_DIR": str(data)}),
        # DATA_DIR in its command line, as etcd's --data-dir is.
        "server": subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", str(data)], env=env),
        "stranger": subprocess.Popen(["sleep", "300"], env=env),
    }
    try:
        yield procs
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()


def test_down_after_a_killed_up_kills_what_the_cluster_left_and_nothing_else(
    tmp_path: Path, sleepers: dict[str, subprocess.Popen[bytes]]
) -> None:
    data = tmp_path / "cluster"
    gone = subprocess.Popen(["true"])
    gone.wait()  # the `cluster up` that was killed: its pid runs nothing now
    hosts = [
        {"name": "tally1", "address": "127.0.1.7", "roles": ["tally"], "pids": {"tally": sleepers["service"].pid}},
        {"name": "db1", "address": "127.0.1.1", "roles": ["etcd"], "pids": {"etcd": sleepers["server"].pid}},
        # A pid the kernel has since given to a process of nobody's in this cluster.
        {"name": "tally2", "address": "127.0.1.8", "roles": ["tally"], "pids": {"tally": sleepers["stranger"].pid}},
    ]
    (data / "cluster.json").write_text(json.dumps({"pid": gone.pid, "hosts": hosts}))

    done = subprocess.run(
        [sys.executable, "-m", "cli", "cluster", "down", "--data-dir", str(data)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert sleepers["service"].wait(10) == -9
    assert sleepers["server"].wait(10) == -9
    assert sleepers["stranger"].poll() is None
    assert not (data / "cluster.json").exists()


def test_down_without_a_cluster_says_so(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli", "cluster", "down", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0
    assert "no cluster runs on" in done.stderr
