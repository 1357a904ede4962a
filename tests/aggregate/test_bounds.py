"""Aggregate's request limits: a maximal legal batch fits, a byte beyond a method's limit is refused before
it is parsed, naming the limit; the reads take a small request."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.aggregate.limits import aggregate_request_limits, largest_tps_update
from services.aggregate.updates import MAX_FORM_COUNT
from services.tally.relay import tps_update
from suara.client import service_names
from suara.election.checks import ALL_CHECKS, MAX_COUNT, MAX_VERSION
from suara.election.form import ADMIN_KEYS, counts_of, form_from_dict
from suara.registry.contests import read_contests
from suara.runtime.settings import SettingError, Settings
from suara.runtime.wire import AGGREGATE_MAX_BATCH, SMALL_REQUEST_BYTES
from suara.v1 import aggregate_pb2
from tests.support.aggregate import Aggregate
from tests.support.fuzz import call_raw, varint

SERVICE = service_names.AGGREGATE
CONTESTS = read_contests()  # the packaged registry: what the `aggregate` fixture loads
INT64 = st.integers(-(2**63), 2**63 - 1)


def _padded(message: bytes, size: int) -> bytes:
    """`message` and an unknown field (number 1000, which the parser keeps aside) to exactly `size` bytes."""
    tag = varint(1000 << 3 | 2)
    for n in range(size - len(message) - len(tag), -1, -1):  # the length's own varint shrinks the payload
        body = message + tag + varint(n) + b"\0" * n
        if len(body) == size:
            return body
    raise AssertionError(f"cannot pad {len(message)} bytes to {size}")


@st.composite
def tps_updates(draw: st.DrawFn) -> aggregate_pb2.TpsUpdate:
    """Any update of the legal shape (a contest of the registry, its choices, the known checks, at most three
    photos), its numbers anything an int64 holds: legal or refused alone, never too large for its batch."""
    contest = draw(st.sampled_from(CONTESTS))
    choices = draw(st.lists(st.sampled_from([c.id for c in contest.choices]), unique=True))
    return aggregate_pb2.TpsUpdate(
        tps=draw(st.from_regex(r"[0-9]{13}", fullmatch=True)),
        contest=contest.id,
        version=draw(INT64),
        totals=aggregate_pb2.Totals(
            votes={c: draw(INT64) for c in choices},
            **{k: draw(INT64) for k in ("suara_sah", "suara_tidak_sah", "suara_total", "dpt", "pengguna")},
        ),
        quarantined=draw(st.booleans()),
        failed_checks=draw(st.lists(st.sampled_from(ALL_CHECKS), unique=True)),
        administrasi={k: draw(INT64) for k in draw(st.lists(st.sampled_from(ADMIN_KEYS), unique=True))},
        photo_sha256=draw(st.lists(st.from_regex(r"[0-9a-f]{64}", fullmatch=True), max_size=3)),
    )


@given(update=tps_updates())
def test_no_update_of_the_legal_shape_is_larger_than_the_largest(update: aggregate_pb2.TpsUpdate) -> None:
    one = aggregate_pb2.ApplyUpdatesRequest(updates=[update]).ByteSize()
    assert one <= len(largest_tps_update(CONTESTS))


def _fullest(version: int, count: int, admin: int) -> aggregate_pb2.TpsUpdate:
    contest = max(CONTESTS, key=lambda c: sum(len(ch.id) + 12 for ch in c.choices))
    return aggregate_pb2.TpsUpdate(
        tps="1101010001001", contest=contest.id, version=version,
        totals=aggregate_pb2.Totals(
            votes={c.id: count for c in contest.choices}, suara_sah=count, suara_tidak_sah=count,
            suara_total=count, dpt=count, pengguna=count,
        ),
        quarantined=True, failed_checks=list(ALL_CHECKS), administrasi=dict.fromkeys(ADMIN_KEYS, admin),
        photo_sha256=["0" * 64] * 3,
    )  # fmt: skip


def test_a_maximal_legal_batch_fits_its_limit() -> None:
    limit = aggregate_request_limits(CONTESTS)["ApplyUpdates"]
    legal = _fullest(MAX_VERSION, MAX_COUNT, MAX_FORM_COUNT)  # every count at its largest legal value
    assert aggregate_pb2.ApplyUpdatesRequest(updates=[legal] * AGGREGATE_MAX_BATCH).ByteSize() <= limit
    # Every number negative (refused alone, at its widest encoding): exactly the limit, not a byte to spare.
    widest = _fullest(-1, -1, -1)
    assert aggregate_pb2.ApplyUpdatesRequest(updates=[widest] * AGGREGATE_MAX_BATCH).ByteSize() == limit


async def _at_the_edge(aggregate: Aggregate, method: str, message: bytes, limit: int) -> grpc.aio.AioRpcError:
    """`message` padded to the limit is let through to the handler; one byte more is refused, naming the limit."""
    path = service_names.method_path(SERVICE, method)
    channel = aggregate.channel_for(method)
    assert await call_raw(channel, path, _padded(message, limit)) != grpc.StatusCode.RESOURCE_EXHAUSTED
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(path)
    try:
        await call(_padded(message, limit + 1), timeout=30)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
        # Aggregate names the method's limit; above the largest of them gRPC refuses first, naming both sizes.
        details = error.details() or ""
        assert f"{method}'s limit of {limit} bytes" in details or f"{limit + 1} vs. {limit}" in details, details
        return error
    raise AssertionError(f"{limit + 1} bytes into {method} were taken")


async def test_each_method_takes_up_to_its_limit_and_not_a_byte_more(aggregate: Aggregate) -> None:
    limits = aggregate_request_limits(aggregate.app.service.catalog.contests.values())
    # An unknown TPS: refused alone, nothing applied.
    one = aggregate_pb2.ApplyUpdatesRequest(
        updates=[aggregate_pb2.TpsUpdate(tps="0000000000000", contest="ppwp", version=1)]
    ).SerializeToString()
    await _at_the_edge(aggregate, "ApplyUpdates", one, limits["ApplyUpdates"])
    # No source: INVALID_ARGUMENT once parsed.
    await _at_the_edge(aggregate, "ApplyAreaUpdates", b"", limits["ApplyAreaUpdates"])
    await _at_the_edge(aggregate, "SubmitRecap", b"", limits["SubmitRecap"])
    changes = aggregate_pb2.ChangesRequest(since=0, limit=1).SerializeToString()
    await _at_the_edge(aggregate, "Changes", changes, SMALL_REQUEST_BYTES)
    assert await aggregate.db.fetchval("SELECT count(*) FROM aggregate.tps_result") == 0


def test_the_relay_never_builds_an_update_above_the_largest() -> None:
    # The relay's batch is at most AGGREGATE_MAX_BATCH rows (SUARA_RELAY_BATCH), each from a form tally
    # stored: its contest's choices only, the Sirekap administrasi, at most three photos, any int64 counts.
    widest = -(2**63)
    for contest in CONTESTS:
        form = form_from_dict(
            {
                "tps": "1101010001001", "contest": contest.id, "version": MAX_VERSION,
                "votes": {c.id: widest for c in contest.choices},
                "administrasi": dict.fromkeys(ADMIN_KEYS, widest),
                "photo_sha256": ["0" * 64] * 3,
            }
        )  # fmt: skip
        row = {
            "tps": form.tps, "contest": form.contest, "version": form.version, "counts": counts_of(form),
            "quarantined": True, "failed_checks": list(ALL_CHECKS), "photo_sha256": list(form.photo_sha256),
        }  # fmt: skip
        one = aggregate_pb2.ApplyUpdatesRequest(updates=[tps_update(row)]).ByteSize()
        assert one <= len(largest_tps_update(CONTESTS)), contest.id
    # ... and its batch setting goes no further than the batch cap the limit is sized for.
    assert Settings.from_env({"SUARA_RELAY_BATCH": str(AGGREGATE_MAX_BATCH)}).relay.batch == AGGREGATE_MAX_BATCH
    with pytest.raises(SettingError):
        Settings.from_env({"SUARA_RELAY_BATCH": str(AGGREGATE_MAX_BATCH + 1)})


def test_the_client_guide_states_the_limits_of_the_packaged_registry() -> None:
    guide = (Path(__file__).parents[2] / "docs" / "client-guide.md").read_text(encoding="utf-8")
    limits = aggregate_request_limits(CONTESTS)
    for method in ("ApplyUpdates", "ApplyAreaUpdates"):
        assert f"{limits[method]:,} bytes" in guide, method
