"""Where a channel connects: one HOST:PORT, or several (`h1:p1,h2:p2`) spread by gRPC itself.

One address is passed to gRPC unchanged. Several become one `ipv4:`/`ipv6:` target with client-side
`round_robin` and health checking (gRPC's `healthCheckConfig`): the channel keeps a connection to each,
watches each one's overall health (the "" service every suara server reports), and sends calls only
to those answering SERVING. A dead instance, or one saying NOT_SERVING while it stops, gets no calls;
a call fails UNAVAILABLE only when none is left, and callers resend as for any outage.

A host name among several is resolved once, when the channel opens (to IPv4 where it has one).
Every address must be of one family. Over TLS every instance's certificate is checked against the
first address's host, so each must name it: issue the service one certificate naming every host it
runs on (`suara pki issue aggregate --host h1 --host h2`) and give it to each instance.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from dataclasses import dataclass
from typing import Any, Final

# Calls go to every SERVING instance in turn; "" is the server's overall health (suara.runtime.grpc_server).
SPREAD_CONFIG: Final = json.dumps(
    {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}}
)


@dataclass(frozen=True)
class Target:
    """A gRPC target and the channel options it needs."""

    target: str
    options: tuple[tuple[str, Any], ...] = ()
    addresses: tuple[str, ...] = ()  # as given


def split_addresses(value: str) -> list[str]:
    """`h1:p1, h2:p2` → ["h1:p1", "h2:p2"] (blanks and empty items dropped)."""
    return [a for a in (item.strip() for item in value.split(",")) if a]


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"{address!r}: not HOST:PORT with a port from 1 to 65535")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _resolved(host: str, port: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    error: OSError | None = None
    for family in (socket.AF_INET, socket.AF_INET6):  # IPv4 first: `localhost` is then 127.0.0.1 everywhere
        try:
            found = socket.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
        except OSError as exc:
            error = error or exc
            continue
        return ipaddress.ip_address(found[0][4][0])
    raise ValueError(f"{host}:{port}: the name does not resolve ({error})")


def channel_target(value: str) -> Target:
    """The target for `value`: one address as it is, several as one balanced, health-checked target.
    ValueError names an address that is not HOST:PORT, does not resolve, or is of another family."""
    addresses = split_addresses(value)
    if "," not in value:
        return Target(value, (), tuple(addresses))  # exactly as gRPC has always been given it
    if len(addresses) == 1:
        return Target(addresses[0], (), tuple(addresses))
    places = [_host_port(a) for a in addresses]
    ips = [_resolved(host, port) for host, port in places]
    families = {ip.version for ip in ips}
    if len(families) > 1:
        raise ValueError(f"{value!r}: IPv4 and IPv6 addresses mixed; give addresses of one family")
    if families == {4}:
        target = "ipv4:" + ",".join(f"{ip}:{port}" for ip, (_, port) in zip(ips, places, strict=True))
    else:
        target = "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, (_, port) in zip(ips, places, strict=True))
    first_host, first_port = places[0]
    authority = f"[{first_host}]:{first_port}" if ":" in first_host else f"{first_host}:{first_port}"
    options = (
        ("grpc.service_config", SPREAD_CONFIG),
        # The name a TLS certificate is checked against, and the :authority of every call.
        ("grpc.default_authority", authority),
    )
    return Target(target, options, tuple(addresses))
