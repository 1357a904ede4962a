"""`suara health TARGET`: one gRPC health check, for container health checks and probes."""

from __future__ import annotations

import argparse
from typing import Any

from cli.outbox import add_tls_arguments
from suara.runtime.settings import Settings

EXIT_SERVING = 0
EXIT_NOT_SERVING = 1

# A name instead of HOST:PORT: that service's public listener on this host, at the port its settings say,
# asked about the service itself (what `suara up` waits for), so one image's health check needs no address.
_SERVICES = ("tally", "aggregate", "publish")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "health",
        help="ask a suara server whether it is SERVING (gRPC health): exit 0 if so, 1 otherwise",
        description=(
            "Call grpc.health.v1.Health/Check once and print the answer. TARGET is HOST:PORT, or tally,\n"
            "aggregate or publish: that service's public listener on this host (localhost, port\n"
            "SUARA_<SERVICE>_PORT), asked about suara.v1.<Service>Service unless --service says otherwise.\n"
            "Over TLS the server's certificate must name the host dialled (issue it with --host localhost\n"
            "for a local check). Made for container health checks: deploy/Dockerfile's HEALTHCHECK."
        ),
        epilog=(
            "exit status: 0 SERVING; 1 anything else (NOT_SERVING, an unknown service, no answer within\n"
            "--timeout); 2 a bad setting (no CA and not --insecure)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="TARGET", help="HOST:PORT, or tally, aggregate or publish (on localhost)")
    add_tls_arguments(p, "the server's")
    p.add_argument(
        "--service",
        help="the service to ask about, e.g. suara.v1.TallyService; '' for the server as a whole "
        "(default: the named service's, or '' with HOST:PORT)",
    )
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="deadline of the check (default: 5)")
    p.set_defaults(handler=run_health)


def resolve(target: str, service: str | None, settings: Settings) -> tuple[str, str]:
    """(address, service name to ask about) for TARGET and --service."""
    if target in _SERVICES:
        from suara.client import service_names

        port = getattr(settings, target).port
        full_name = getattr(service_names, target.upper()).full_name
        return f"localhost:{port}", full_name if service is None else service
    return target, service or ""


async def run_health(args: argparse.Namespace, settings: Settings) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from cli.outbox import tls_of
    from suara.runtime.tls import open_channel

    address, service = resolve(args.target, args.service, settings)
    what = f"{address} ({service or 'the server'})"
    async with open_channel(address, tls_of(args, settings)) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=args.timeout
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                print(f"{what}: the server does not know this service", flush=True)
            else:
                print(f"{what}: no answer: {exc.code().name} {exc.details()}", flush=True)
            return EXIT_NOT_SERVING
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{what}: {status}", flush=True)
    return EXIT_SERVING if reply.status == health_pb2.HealthCheckResponse.SERVING else EXIT_NOT_SERVING
