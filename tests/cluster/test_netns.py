"""cli/netns.py: the hosts' network namespaces, a partition between two of them, and nothing left behind.

Real kernel namespaces, a real bridge and veth pairs (as root; skipped otherwise, with the reason).
The oracle is the kernel itself: TCP connections made from inside one namespace to a server in another,
through `ip netns exec`, succeed or fail as the partition says.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.netns import HostNetwork, NetworkError, choose, netns_possible

WHY_NOT = netns_possible()
needs_netns = pytest.mark.skipif(WHY_NOT is not None, reason=f"{WHY_NOT} (CI runs as root)")

# Serves until killed: accepts, and answers each connection's first line with "ok".
SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7000)); s.listen(); print("listening", flush=True)
while True:
    c, _ = s.accept(); c.recv(10); c.sendall(b"ok")
"""
# Connects, says hello and reads the answer; then (with a second argument) waits for a line on stdin and
# uses the same connection again: "ok", or the error's errno name, each on a line.
CLIENT = """
import errno, socket, sys, time
def use(c):
    try:
        c.sendall(b"hi\\n"); c.settimeout(5); print("ok" if c.recv(10) == b"ok" else "closed", flush=True)
    except OSError as e:
        print(errno.errorcode.get(e.errno, "timeout"), flush=True)
try:
    c = socket.create_connection((sys.argv[1], 7000), timeout=5)
except OSError as e:
    print(errno.errorcode.get(e.errno, "timeout"), flush=True); sys.exit()
use(c)
if len(sys.argv) > 2:
    sys.stdin.readline(); use(c)
"""


@pytest.fixture
def network(tmp_path: Path) -> Iterator[HostNetwork]:
    net = HostNetwork.plan("netns", tmp_path / "cluster", ["db1", "tally1", "tally2"])
    try:
        net.create()
        yield net
    finally:
        net.remove()


def _in(net: HostNetwork, host: str | None, code: str, *args: str) -> list[str]:
    prefix = net.prefix(host) if host else []
    return [*prefix, sys.executable, "-c", code, *args]


def _connect(net: HostNetwork, host: str | None, target: str) -> tuple[str, float]:
    started = time.monotonic()
    done = subprocess.run(_in(net, host, CLIENT, target), capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip(), time.monotonic() - started


@needs_netns
def test_hosts_reach_each_other_until_cut_off_then_again_once_healed(network: HostNetwork) -> None:
    addresses = network.addresses
    assert len(set(addresses.values())) == 3
    assert network.subnet is not None
    assert all(ipaddress.IPv4Address(a) in network.subnet for a in addresses.values())
    assert ipaddress.IPv4Address(network.gateway) in network.subnet
    db = addresses["db1"]
    server = subprocess.Popen(_in(network, "db1", SERVER, db), stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        # From this machine (the bridge) and from both tally hosts.
        assert _connect(network, None, db)[0] == "ok"
        assert _connect(network, "tally1", db)[0] == "ok"
        # A connection open across the cut: used again after it, it fails at once (aborted), not hanging.
        held = subprocess.Popen(
            _in(network, "tally1", CLIENT, db, "hold"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert held.stdin is not None and held.stdout is not None
        assert held.stdout.readline().strip() == "ok"

        network.cut("tally1", ["db1"])
        held.stdin.write("again\n")
        held.stdin.flush()
        assert held.stdout.readline().strip() in ("ECONNABORTED", "EPIPE", "ECONNRESET", "closed")
        held.wait(10)
        said, took = _connect(network, "tally1", db)
        assert said == "EHOSTUNREACH"
        assert took < 3.0  # refused at once (the interpreter's start is most of it), not a timeout
        # The other tally host and this machine still reach the database host.
        assert _connect(network, "tally2", db)[0] == "ok"
        assert _connect(network, None, db)[0] == "ok"

        network.heal("tally1", ["db1"])
        assert _connect(network, "tally1", db)[0] == "ok"
    finally:
        server.kill()
        server.wait()


@needs_netns
def test_clusters_on_two_directories_share_no_name_nor_subnet_and_leave_nothing(tmp_path: Path) -> None:
    a = HostNetwork.plan("netns", tmp_path / "a", ["db1", "tally1"])
    b = HostNetwork.plan("netns", tmp_path / "b", ["db1", "tally1"])
    try:
        a.create()
        b.create()
        assert a.bridge != b.bridge and a.namespace("db1") != b.namespace("db1")
        assert a.subnet is not None and b.subnet is not None and not a.subnet.overlaps(b.subnet)
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        assert a.namespace("tally1") in listed and b.namespace("tally1") in listed
    finally:
        removed = a.remove()
        b.remove()
    assert a.bridge in removed and a.namespace("db1") in removed
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert a.tag not in listed and b.tag not in listed
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    assert a.tag not in links and b.tag not in links


def test_loopback_hosts_are_addresses_of_their_own_and_cannot_be_partitioned(tmp_path: Path) -> None:
    net = HostNetwork.plan("loopback", tmp_path, ["db1", "db2", "tally1"])
    net.create()  # nothing to make
    assert list(net.addresses.values()) == ["127.0.1.1", "127.0.1.2", "127.0.1.3"]
    assert net.prefix("tally1") == []
    with pytest.raises(NetworkError, match="--hosts netns"):
        net.cut("tally1", ["db1"])
    assert net.remove() == []
    assert choose("loopback") == ("loopback", None)
    mode, why = choose("auto")
    assert (mode, why) == (("netns", None) if WHY_NOT is None else ("loopback", WHY_NOT))


@needs_netns
def test_cluster_down_removes_the_network_of_an_up_that_was_killed(tmp_path: Path) -> None:
    """`suara cluster up` SIGKILLed leaves its namespaces; `down` removes them from cluster.json."""
    data = tmp_path / "cluster"
    net = HostNetwork.plan("netns", data, ["db1", "tally1"])
    try:
        net.create()
        data.mkdir()
        hosts = [{"name": n, "address": a, "roles": [], "pids": {}, "all_pids": []} for n, a in net.addresses.items()]
        (data / "cluster.json").write_text(json.dumps({"pid": 0, "network": net.describe(), "hosts": hosts}))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUARA_") and k != "DATABASE_URL"}
        down = subprocess.run(
            [sys.executable, "-m", "cli", "cluster", "down", "--data-dir", str(data)],
            capture_output=True, text=True, timeout=60, env=env, check=False,
        )  # fmt: skip
        assert down.returncode == 0, down.stderr
        left = "".join(
            subprocess.run(c, capture_output=True, text=True, check=True).stdout
            for c in (["ip", "netns", "list"], ["ip", "-o", "link", "show"])
        )
        assert net.tag not in left, left
        assert not (data / "cluster.json").exists()
    finally:
        net.remove()
