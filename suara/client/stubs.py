"""Typed async stubs for the suara.v1 services."""

from __future__ import annotations

from typing import cast

import grpc

from suara.v1 import publish_pb2_grpc, tally_pb2_grpc


def tally_stub(channel: grpc.aio.Channel) -> tally_pb2_grpc.TallyServiceAsyncStub:
    # mypy-protobuf's __new__ overloads resolve an aio channel to the sync stub under
    # types-grpcio; at runtime the stub is the same object either way.
    return cast("tally_pb2_grpc.TallyServiceAsyncStub", tally_pb2_grpc.TallyServiceStub(channel))  # type: ignore[redundant-cast]  # runtime: a type-only name


def publish_stub(channel: grpc.aio.Channel) -> publish_pb2_grpc.PublishServiceAsyncStub:
    return cast("publish_pb2_grpc.PublishServiceAsyncStub", publish_pb2_grpc.PublishServiceStub(channel))  # type: ignore[redundant-cast]  # runtime: a type-only name
