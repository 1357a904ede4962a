"""Just enough HTTP/2 to send one gRPC call by hand over a socket we control (so its TLS version can be
capped below what grpcio's own client allows), and to see whether the server answered it with a message.

Request headers are HPACK literals without indexing (no Huffman), which every server must accept.
"""

from __future__ import annotations

import socket
import ssl
import struct
from dataclasses import dataclass, field

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x7
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _literal(name: str, value: str) -> bytes:
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def grpc_call(path: str, message: bytes, authority: str) -> bytes:
    """The client's bytes of one unary gRPC call on stream 1, after the connection preface."""
    headers = b"".join(
        _literal(n, v)
        for n, v in (
            (":method", "POST"),
            (":scheme", "https"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        )
    )
    body = b"\x00" + struct.pack(">I", len(message)) + message
    return (
        PREFACE + _frame(SETTINGS, 0, 0) + _frame(HEADERS, END_HEADERS, 1, headers) + _frame(DATA, END_STREAM, 1, body)
    )


@dataclass
class Answer:
    """What came back on stream 1: DATA payloads (a response message) and whether the stream ended."""

    data: list[bytes] = field(default_factory=list)
    ended: bool = False
    reset: bool = False


def call_over_tls(
    host: str, port: int, ca: bytes, path: str, message: bytes, *, maximum: ssl.TLSVersion
) -> tuple[str, Answer]:
    """One gRPC call over TLS capped at `maximum`: the negotiated version and the answer (blocking)."""
    context = ssl.create_default_context(cadata=ca.decode())
    context.maximum_version = maximum
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, port), timeout=10) as raw, context.wrap_socket(raw, server_hostname=host) as s:
        version = s.version() or ""
        s.sendall(grpc_call(path, message, f"{host}:{port}"))
        return version, _read(s)


def _read(s: ssl.SSLSocket) -> Answer:
    answer = Answer()
    buffer = b""
    while not (answer.ended or answer.reset):
        try:
            chunk = s.recv(65536)
        except (TimeoutError, OSError):
            break
        if not chunk:
            break
        buffer += chunk
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            kind, flags, stream = buffer[3], buffer[4], int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
            payload, buffer = buffer[9 : 9 + length], buffer[9 + length :]
            if kind == SETTINGS and not flags & ACK:
                s.sendall(_frame(SETTINGS, ACK, 0))
            elif stream == 1 and kind == DATA:
                answer.data.append(payload)
            elif kind in (RST_STREAM, GOAWAY):
                answer.reset = True
            if stream == 1 and kind in (DATA, HEADERS) and flags & END_STREAM:
                answer.ended = True
    return answer
