"""What a server and its clients agree on beyond the protos: message and batch limits, the retry-after key.

Declared once, so that a client never builds a call its server is bound to refuse.
"""

from __future__ import annotations

from typing import Final

# One gRPC message, either way: a SubmitBatch of forms with their photos, a large GetAreas reply.
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
