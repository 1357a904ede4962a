"""Typed async stub for suara.v1.AggregateService."""

from __future__ import annotations

from typing import cast

import grpc

from suara.v1 import aggregate_pb2_grpc


def aggregate_stub(channel: grpc.aio.Channel) -> aggregate_pb2_grpc.AggregateServiceAsyncStub:
    # As in suara.client.stubs: the __new__ overloads resolve an aio channel to the sync stub under
    # types-grpcio; at runtime the stub is the same object either way.
    return cast("aggregate_pb2_grpc.AggregateServiceAsyncStub", aggregate_pb2_grpc.AggregateServiceStub(channel))  # type: ignore[redundant-cast]  # runtime: a type-only name
