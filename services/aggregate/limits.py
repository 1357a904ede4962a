"""The bytes each aggregate method takes in one request, derived from the registry it serves.

A batch's size is set by its largest legal update: one TPS's form (or one area's totals) for the
contest with the most and longest choice ids, every Sirekap administrasi count, every check failed,
every photo. Every integer is counted at its widest encoding (ten bytes), so an update refused for a
bad number still fits its batch and is refused alone, as updates.py refuses it, never its whole batch.
"""

from __future__ import annotations

from collections.abc import Iterable

from suara.election.checks import ALL_CHECKS, MAX_PHOTOS
from suara.election.codes import LENGTHS, TPS_LENGTH
from suara.election.contest import Contest
from suara.election.form import ADMIN_KEYS
from suara.runtime.wire import AGGREGATE_MAX_BATCH, SMALL_REQUEST_BYTES
from suara.v1 import aggregate_pb2

WIDEST = -1  # a negative int64: the widest varint (ten bytes) a count can take
# ApplyAreaUpdates' source (an instance's name) and the message's own framing.
AREA_SOURCE_BYTES = 1024


def _totals(contest: Contest) -> aggregate_pb2.Totals:
    return aggregate_pb2.Totals(
        votes={c.id: WIDEST for c in contest.choices},
        suara_sah=WIDEST,
        suara_tidak_sah=WIDEST,
        suara_total=WIDEST,
        dpt=WIDEST,
        pengguna=WIDEST,
    )


def largest_tps_update(contests: Iterable[Contest]) -> bytes:
    """One ApplyUpdatesRequest holding the largest legal TpsUpdate of any of `contests`."""
    updates = [
        aggregate_pb2.TpsUpdate(
            tps="9" * TPS_LENGTH,
            contest=c.id,
            version=WIDEST,
            totals=_totals(c),
            quarantined=True,
            failed_checks=list(ALL_CHECKS),
            administrasi=dict.fromkeys(ADMIN_KEYS, WIDEST),
            photo_sha256=["f" * 64] * MAX_PHOTOS,
        )
        for c in contests
    ]
    return max((aggregate_pb2.ApplyUpdatesRequest(updates=[u]).SerializeToString() for u in updates), key=len)


def largest_area_update(contests: Iterable[Contest]) -> bytes:
    """One ApplyAreaUpdatesRequest (no source) holding the largest legal AreaUpdate of any of `contests`."""
    updates = [
        aggregate_pb2.AreaUpdate(
            area="9" * max(n for n in LENGTHS if n != TPS_LENGTH),
            contest=c.id,
            version=WIDEST,
            totals=_totals(c),
            tps_total=WIDEST,
            tps_reported=WIDEST,
            tps_quarantined=WIDEST,
        )
        for c in contests
    ]
    return max((aggregate_pb2.ApplyAreaUpdatesRequest(updates=[u]).SerializeToString() for u in updates), key=len)


def aggregate_request_limits(contests: Iterable[Contest]) -> dict[str, int]:
    """Bytes each aggregate method takes in one request, by method name; others (the reads): SMALL_REQUEST_BYTES.

    Each repeated update is encoded on its own (its tag, its length, itself), so AGGREGATE_MAX_BATCH of
    the largest is exactly AGGREGATE_MAX_BATCH times one.
    """
    contests = list(contests) or [Contest("", "", "", 1, ())]  # no registry yet: updates without votes
    return {
        "ApplyUpdates": AGGREGATE_MAX_BATCH * len(largest_tps_update(contests)),
        "ApplyAreaUpdates": AGGREGATE_MAX_BATCH * len(largest_area_update(contests)) + AREA_SOURCE_BYTES,
        # A recap is one area's totals for one contest, signed: far below this.
        "SubmitRecap": SMALL_REQUEST_BYTES,
    }
