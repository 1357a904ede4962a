"""Hostile request bytes for fuzzing RPCs: valid requests mutated (they mostly still parse, so they reach
the handler's own checks), and the statuses that say nothing precise."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from hypothesis import strategies as st

# What a handler must never answer to bad input: it says "our bug", not what is wrong with the request.
IMPRECISE = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """`seed` with a few bytes flipped, inserted, deleted or a slice repeated: mostly still parses."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "repeat", "truncate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and data:
            del data[at : at + draw(st.integers(1, 4))]
        elif kind == "repeat" and data:
            data[at:at] = data[at : at + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del data[at:]
    return bytes(data)


def varint(n: int) -> bytes:
    """`n` (not negative) as a protobuf varint."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def length_delimited(field: int, data: bytes) -> bytes:
    """`data` as protobuf field `field` of wire type 2 (bytes, a string, a message), known or not."""
    return varint(field << 3 | 2) + varint(len(data)) + data


async def call_raw(channel: grpc.aio.Channel, method_path: str, body: bytes) -> grpc.StatusCode:
    """`body` as the request of `method_path`, unparsed: its status, which must never be imprecise."""
    call: Callable[..., object] = channel.unary_unary(method_path)
    try:
        await call(body, timeout=10)  # type: ignore[misc]  # bytes in, bytes out: no (de)serializer
    except grpc.aio.AioRpcError as error:
        assert error.code() not in IMPRECISE, (method_path, body[:80], error.code(), error.details())
        return error.code()
    return grpc.StatusCode.OK
