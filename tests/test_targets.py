"""Channel targets (suara.runtime.targets): one address unchanged, several spread by gRPC's round_robin.

What a spread target does with real servers (calls skip a NOT_SERVING or dead instance) is proved in
tests/aggregate/test_instances.py; here, what it is made of.
"""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from suara.runtime.targets import channel_target, split_addresses


@pytest.mark.parametrize("address", ["127.0.0.1:50062", "aggregate.internal:7000", "[::1]:50062", "localhost:1"])
def test_one_address_is_passed_to_grpc_as_it_is(address: str) -> None:
    target = channel_target(address)
    assert (target.target, target.options) == (address, ())


ports = st.integers(1, 65535)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)


@given(hosts=st.lists(st.tuples(ipv4, ports), min_size=2, max_size=6))
def test_several_ipv4_addresses_become_one_balanced_health_checked_target(hosts: list[tuple[str, int]]) -> None:
    value = " , ".join(f"{h}:{p}" for h, p in hosts) + ","  # blanks and a trailing comma are forgiven
    target = channel_target(value)
    assert target.target == "ipv4:" + ",".join(f"{h}:{p}" for h, p in hosts)  # every one, in order
    options = dict(target.options)
    config = json.loads(options["grpc.service_config"])
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["healthCheckConfig"] == {"serviceName": ""}  # the server's overall health
    assert options["grpc.default_authority"] == f"{hosts[0][0]}:{hosts[0][1]}"  # TLS checks the first name


@given(hosts=st.lists(st.tuples(ipv6, ports), min_size=2, max_size=4))
def test_several_ipv6_addresses_become_one_ipv6_target(hosts: list[tuple[str, int]]) -> None:
    target = channel_target(",".join(f"[{h}]:{p}" for h, p in hosts))
    assert target.target == "ipv6:" + ",".join(f"[{ipaddress.ip_address(h)}]:{p}" for h, p in hosts)
    assert dict(target.options)["grpc.default_authority"] == f"[{hosts[0][0]}]:{hosts[0][1]}"


def test_names_are_resolved_and_the_first_name_is_what_tls_checks() -> None:
    target = channel_target("localhost:7001,127.0.0.1:7002")
    assert target.target == "ipv4:127.0.0.1:7001,127.0.0.1:7002"  # localhost: this machine, IPv4 first
    assert dict(target.options)["grpc.default_authority"] == "localhost:7001"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("127.0.0.1:1,[::1]:2", "IPv4 and IPv6 addresses mixed"),
        ("127.0.0.1:1,127.0.0.1", "'127.0.0.1': not HOST:PORT"),
        ("127.0.0.1:1,127.0.0.1:0", "'127.0.0.1:0': not HOST:PORT"),
        ("127.0.0.1:1,no-such-host.invalid:2", "no-such-host.invalid:2: the name does not resolve"),
    ],
)
def test_a_bad_list_is_refused_naming_the_address(value: str, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("[", r"\[").replace("(", r"\(")):
        channel_target(value)


def test_one_address_with_a_stray_comma_is_that_address() -> None:
    assert channel_target(" 127.0.0.1:7001 ,").target == "127.0.0.1:7001"


def test_split_addresses() -> None:
    assert split_addresses(" a:1, ,b:2,") == ["a:1", "b:2"]
    assert split_addresses("a:1") == ["a:1"]
