"""What a server and its clients agree on beyond the protos: message and batch limits, the retry-after key.

Declared once, so that a client never builds a call its server is bound to refuse.
"""

from __future__ import annotations

from typing import Final

# One gRPC message between services, either way: an ApplyUpdates of 10,000 updates, a large GetAreas
# reply. tally's public methods take far less (tally_request_limits): they are the open door.
MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
# Channel and server options that lift gRPC's default (4 MB) to MAX_MESSAGE_BYTES both ways.
MESSAGE_LIMITS: Final = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)
# Trailing metadata beside google.rpc.RetryInfo, so a client needs no protobuf decoding to honour the hint.
RETRY_AFTER_KEY: Final = "retry-after-ms"

TALLY_MAX_BATCH: Final = 1000  # forms per SubmitBatch call, devices per EnrollDevices call
AGGREGATE_MAX_BATCH: Final = 10_000  # updates per ApplyUpdates or ApplyAreaUpdates call
AGGREGATE_MAX_AREAS: Final = 2000  # areas per GetAreas call

MAX_PHOTOS: Final = 3  # photos per form (the domain rule, suara.election.checks.MAX_PHOTOS)
# One form without its photos: the signed payload (a real one is about a kilobyte), signature, ids.
FORM_ENVELOPE_BYTES: Final = 256 * 1024
# A request that carries no form: an id, a TPS code, a page token.
SMALL_REQUEST_BYTES: Final = 64 * 1024
# EnrollDevices: TALLY_MAX_BATCH keys with their TPS and a label each.
ENROLL_REQUEST_BYTES: Final = 1024 * 1024


def tally_submit_bytes(photo_max_bytes: int) -> int:
    """The largest legal Submit: three photos at the photo limit and the form. A SubmitBatch is bound by
    the same bytes (1,000 forms with full photos would be gigabytes, no sane message): a client splits
    a catch-up into batches of at most this size, or sends a form with large photos alone."""
    return MAX_PHOTOS * photo_max_bytes + FORM_ENVELOPE_BYTES


def tally_request_limits(photo_max_bytes: int) -> dict[str, int]:
    """Bytes each tally method takes in one request (decompressed), by method name; others: SMALL_REQUEST_BYTES."""
    submit = tally_submit_bytes(photo_max_bytes)
    return {
        "Submit": submit,
        "SubmitBatch": submit,
        "EnrollDevice": SMALL_REQUEST_BYTES,
        "EnrollDevices": ENROLL_REQUEST_BYTES,
    }


# What every server allows each connection, whatever its message limits: concurrent calls (streams), and
# how much of one call's body it buffers ahead of the handler (the HTTP/2 window). gRPC grows that window
# by bandwidth probing (BDP) to many megabytes a stream, so a few large calls that are refused anyway
# were first buffered whole: a fixed window bounds what a caller makes the server hold, at the cost of
# one window per round trip for a large photo on a slow, distant link.
# A bound, not a throttle: gRPC's server counts a finished call until the application has let it go, so
# under load a limit of 100 refused streams (REFUSED_STREAM: UNAVAILABLE) to a client holding 8 a
# connection. A client past the limit is mostly queued by gRPC, but now and then a stream is refused.
MAX_STREAMS_PER_CONNECTION: Final = 1000
STREAM_WINDOW_BYTES: Final = 1024 * 1024
TRANSPORT_LIMITS: Final = (
    ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", STREAM_WINDOW_BYTES),
)
