"""Render deploy/envoy/tally.yaml for a set of tally processes (standard library only).

    python deploy/envoy/render.py --listen 0.0.0.0:443 --admin-port 9901 \
        --cert /etc/suara/envoy.crt --key /etc/suara/envoy.key --ca /etc/suara/ca.crt \
        --upstream 10.0.0.11:50051 --upstream 10.0.0.12:50051 > envoy.yaml
    envoy -c envoy.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TEMPLATE = Path(__file__).with_name("tally.yaml")


def _address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r}: expected HOST:PORT")
    return host, int(port)


def render(
    listen: tuple[str, int],
    admin_port: int,
    cert: Path,
    key: Path,
    ca: Path,
    upstreams: list[tuple[str, int]],
    admin_address: str = "127.0.0.1",
) -> str:
    endpoints = "\n".join(
        f"              - endpoint:\n                  address:\n"
        f"                    socket_address: {{ address: {host}, port_value: {port} }}"
        for host, port in upstreams
    )
    values = {
        "@LISTEN_HOST@": listen[0],
        "@LISTEN_PORT@": str(listen[1]),
        "@ADMIN_PORT@": str(admin_port),
        "@ADMIN_ADDRESS@": admin_address,
        "@CERT@": str(cert.resolve()),
        "@KEY@": str(key.resolve()),
        "@CA@": str(ca.resolve()),
        "@UPSTREAMS@": endpoints,
    }
    text = TEMPLATE.read_text()
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", type=_address, required=True, help="HOST:PORT devices dial")
    parser.add_argument("--admin-port", type=int, required=True, help="Envoy's admin port")
    parser.add_argument(
        "--admin-address", default="127.0.0.1", help="where the admin port is bound (default 127.0.0.1: this host only)"
    )
    parser.add_argument("--cert", type=Path, required=True, help="Envoy's server certificate (the public name)")
    parser.add_argument("--key", type=Path, required=True, help="its private key")
    parser.add_argument("--ca", type=Path, required=True, help="the CA the tally processes' certificates chain to")
    parser.add_argument(
        "--upstream", type=_address, action="append", required=True, help="a tally's HOST:PORT (repeatable)"
    )
    args = parser.parse_args(argv)
    sys.stdout.write(
        render(args.listen, args.admin_port, args.cert, args.key, args.ca, args.upstream, args.admin_address)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
