"""Where `suara cluster`'s hosts live: each in a network namespace of its own, or on its own loopback address.

Network namespaces (`--hosts netns`, needs root and iproute2's `ip`): the cluster makes one Linux bridge
and, per host, a namespace with a veth pair, the namespace's end (eth0) on one private /24 the cluster
owns, the other end on the bridge. The bridge holds the subnet's first address, so this machine's root
namespace (the load test, an operator's browser) reaches every host; nothing else has an address there.
Each host's processes run inside its namespace (`ip netns exec`, which execs: the pid recorded is the
process's own). Names carry a tag made from the data directory, so clusters on different directories
(parallel tests) never share a bridge, a namespace or a subnet; `remove` deletes them all (a namespace's
deletion takes its veth pair with it).

Loopback addresses (`--hosts loopback`, anyone): each host is a group of processes bound to its own
address in 127.0.1.0/24 (all of 127/8 routes to loopback on Linux); no isolation beyond that.

A partition (`cut`) is made of two things, both with `ip` alone, on both ends: an `unreachable` route to
each peer (a new connection fails at once with "no route to host", as behind a firewall that rejects),
and every established TCP connection between them aborted (`ss -K`: as the firewall's resets would; a
silent drop would leave a database backend holding its locks until TCP keepalive gave up). `heal`
removes the routes.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

Mode = Literal["netns", "loopback"]
MODES: Final = ("auto", "netns", "loopback")
LOOPBACK_BASE: Final = "127.0.1.0"
# Where the cluster looks for a free /24: 10.(200..249).x.0, the candidate's start taken from the tag.
SUBNET_FIRST_OCTET: Final = 10
SUBNET_SECOND_OCTETS: Final = range(200, 250)
NAMESPACE_PREFIX: Final = "suara-"


class NetworkError(RuntimeError):
    pass


def tag_of(data_dir: Path) -> str:
    """Six hex digits naming the cluster of `data_dir` in every bridge, link and namespace name."""
    return hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:6]


def netns_possible() -> str | None:
    """Why namespaces cannot be made here (None when they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None or shutil.which("ss") is None:
        return "iproute2 (`ip`, `ss`) is not installed (make system-deps)"
    if not Path("/proc/self/ns/net").exists():
        return "this kernel has no network namespaces"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def _subnets_in_use() -> list[ipaddress.IPv4Network]:
    routes = json.loads(_ip("-j", "-4", "route", "show", "table", "all").stdout or "[]")
    found = []
    for route in routes:
        dst = route.get("dst", "")
        if dst and dst != "default":
            with contextlib.suppress(ValueError):
                found.append(ipaddress.IPv4Network(dst, strict=False))
    return found


def _free_subnet(tag: str) -> ipaddress.IPv4Network:
    used = _subnets_in_use()
    start = int(tag, 16)
    candidates = len(SUBNET_SECOND_OCTETS) * 256
    for i in range(candidates):
        n = (start + i) % candidates
        second, third = SUBNET_SECOND_OCTETS[n // 256], n % 256
        subnet = ipaddress.IPv4Network(f"{SUBNET_FIRST_OCTET}.{second}.{third}.0/24")
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise NetworkError("no free /24 in 10.200.0.0-10.249.255.0 for the cluster's bridge")


@dataclass
class HostNetwork:
    """Every host's address (and namespace, in netns mode), made by `create`, removed by `remove`."""

    mode: Mode
    tag: str
    names: list[str]
    subnet: ipaddress.IPv4Network | None = None
    addresses: dict[str, str] = field(default_factory=dict)
    created: bool = False

    @classmethod
    def plan(cls, mode: Mode, data_dir: Path, names: Iterable[str]) -> HostNetwork:
        names = list(names)
        tag = tag_of(data_dir)
        if mode == "loopback":
            base = ipaddress.IPv4Address(LOOPBACK_BASE)
            return cls(mode, tag, names, addresses={n: str(base + i + 1) for i, n in enumerate(names)})
        return cls(mode, tag, names)

    @property
    def bridge(self) -> str:
        return f"sb-{self.tag}"

    @property
    def gateway(self) -> str:
        """The root namespace's address on the bridge (netns mode): where the hosts see this machine from."""
        assert self.subnet is not None
        return str(self.subnet.network_address + 1)

    def namespace(self, name: str) -> str:
        return f"{NAMESPACE_PREFIX}{self.tag}-{name}"

    def _veth(self, name: str) -> str:
        return f"sv-{self.tag}-{self.names.index(name)}"  # at most 15 characters: IFNAMSIZ

    def prefix(self, name: str) -> list[str]:
        """What a command of host `name` runs behind: into its namespace, or nothing on loopback."""
        return ["ip", "netns", "exec", self.namespace(name)] if self.mode == "netns" else []

    def port_address(self, address: str) -> str:
        """Where to check that a port is free for a server of `address`: the address itself on loopback;
        in netns mode any port is free in a namespace of its own, so loopback serves to keep them distinct."""
        return "127.0.0.1" if self.mode == "netns" else address

    @property
    def networks(self) -> list[str]:
        """The networks the hosts reach each other from (PostgreSQL's pg_hba)."""
        return ["127.0.0.0/8"] + ([str(self.subnet)] if self.subnet is not None else [])

    # -- lifecycle -----------------------------------------------------------------------------------

    def create(self) -> None:
        """Make the bridge and every host's namespace (netns mode); on loopback nothing is made."""
        if self.mode != "netns":
            return
        self.remove()  # what a killed run on the same directory left behind
        self.subnet = _free_subnet(self.tag)
        self.created = True  # from here on `remove` has something to do, even if the rest fails
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, name in enumerate(self.names):
            ns, veth, address = self.namespace(name), self._veth(name), str(self.subnet.network_address + i + 2)
            _ip("netns", "add", ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", veth, "master", self.bridge, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            self.addresses[name] = address

    def remove(self) -> list[str]:
        """Delete this cluster's namespaces and bridge (whatever of them exists); what was deleted."""
        if self.mode != "netns":
            return []
        removed = []
        # The veth pairs first, by their ends here: a deleted namespace is torn down by the kernel later,
        # and its veth pairs with it, so waiting for that would leave links behind for a while.
        for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
            link = line.split(":", 2)[1].strip().split("@", 1)[0] if line.count(":") >= 2 else ""
            if link.startswith(f"sv-{self.tag}-"):
                _ip("link", "del", link, check=False)
                removed.append(link)
        listed = _ip("netns", "list", check=False).stdout.split()
        for ns in listed:
            if ns.startswith(f"{NAMESPACE_PREFIX}{self.tag}-"):
                # A namespace's processes keep it alive past `ip netns del`: the caller stopped them first.
                _ip("netns", "del", ns, check=False)
                removed.append(ns)
        if _ip("link", "show", self.bridge, check=False).returncode == 0:
            _ip("link", "del", self.bridge, check=False)
            removed.append(self.bridge)
        return removed

    # -- partitions ------------------------------------------------------------------------------------

    def cut(self, name: str, peers: Iterable[str]) -> None:
        """Cut host `name` off from `peers` (netns mode): new connections refused, established ones aborted."""
        self._require_netns("cut")
        peers = list(peers)
        for a, b in [(name, p) for p in peers] + [(p, name) for p in peers]:
            _ip("-n", self.namespace(a), "route", "add", "unreachable", f"{self.addresses[b]}/32")
        for a, b in [(name, p) for p in peers] + [(p, name) for p in peers]:
            # Established connections: aborted on both ends (their resets cannot cross the routes above).
            subprocess.run(
                ["ip", "netns", "exec", self.namespace(a), "ss", "-K", "-t", "dst", self.addresses[b]],
                capture_output=True, check=False,
            )  # fmt: skip

    def heal(self, name: str, peers: Iterable[str]) -> None:
        """Undo `cut`: host `name` reaches `peers` again."""
        self._require_netns("heal")
        peers = list(peers)
        for a, b in [(name, p) for p in peers] + [(p, name) for p in peers]:
            _ip("-n", self.namespace(a), "route", "del", "unreachable", f"{self.addresses[b]}/32", check=False)

    def _require_netns(self, what: str) -> None:
        if self.mode != "netns":
            raise NetworkError(f"a partition ({what}) needs network namespaces: run `suara cluster up --hosts netns`")

    def describe(self) -> dict[str, Any]:
        """What cluster.json says of the network."""
        out: dict[str, Any] = {"mode": self.mode, "tag": self.tag}
        if self.mode == "netns":
            out |= {
                "subnet": str(self.subnet), "bridge": self.bridge, "gateway": self.gateway,
                "namespaces": {n: self.namespace(n) for n in self.names},
            }  # fmt: skip
        return out

    @classmethod
    def from_description(cls, described: dict[str, Any], addresses: dict[str, str]) -> HostNetwork:
        """The network cluster.json describes (to cut, heal or remove it from another process)."""
        names = list(described.get("namespaces", addresses))
        subnet = ipaddress.IPv4Network(described["subnet"]) if described.get("subnet") else None
        return cls(described["mode"], described["tag"], names, subnet, dict(addresses), created=True)


def choose(mode: str) -> tuple[Mode, str | None]:
    """The mode `--hosts` asks for ("auto": namespaces where they can be made), and why not when not."""
    why = netns_possible()
    if mode == "netns":
        if why is not None:
            raise NetworkError(f"--hosts netns: {why}; use --hosts loopback")
        return "netns", None
    if mode == "loopback":
        return "loopback", None
    return ("loopback", why) if why is not None else ("netns", None)
