"""Hostile bytes into every aggregate RPC, with the caller's credentials: random, and valid requests
mutated. Every reply is a precise status (never INTERNAL or UNKNOWN), nothing is applied, and aggregate
keeps serving."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from suara.client import service_names
from suara.election.signing import OfficialKey
from suara.v1 import aggregate_pb2
from tests.support.aggregate import Aggregate
from tests.support.factories import TEST_ELECTION
from tests.support.fuzz import call_raw, mutated
from tests.support.rpc_errors import bad_fields

SERVICE = service_names.AGGREGATE
NO_TPS = "0000000000000"  # no TPS of the registry: a mutation of it is (almost surely) none either
_RECAP = aggregate_pb2.RecapForm(
    area="000000", contest="ppwp", version=1, election_id=TEST_ELECTION
).SerializeToString()
SEEDS = {
    "ApplyUpdates": aggregate_pb2.ApplyUpdatesRequest(
        updates=[aggregate_pb2.TpsUpdate(tps=NO_TPS, contest="ppwp", version=1)]
    ).SerializeToString(),
    "ApplyAreaUpdates": aggregate_pb2.ApplyAreaUpdatesRequest(
        source="00", updates=[aggregate_pb2.AreaUpdate(area="0000", contest="ppwp", version=1)]
    ).SerializeToString(),
    "GetArea": aggregate_pb2.GetAreaRequest(area="", contest="ppwp").SerializeToString(),
    "GetAreas": aggregate_pb2.GetAreasRequest(contest="ppwp", areas=["11", "1101"]).SerializeToString(),
    "Changes": aggregate_pb2.ChangesRequest(since=0, limit=5).SerializeToString(),
    "SubmitRecap": aggregate_pb2.SubmitRecapRequest(
        recap=aggregate_pb2.SignedRecap(
            payload=_RECAP,
            signature=OfficialKey.generate("000000", "ppk").sign(_RECAP),
            official_id="off_000000000000000000000000",
        )
    ).SerializeToString(),
    "GetReconciliation": aggregate_pb2.GetReconciliationRequest(area="1101", contest="ppwp").SerializeToString(),
    "ListMismatches": aggregate_pb2.ListMismatchesRequest(area="11", contest="ppwp").SerializeToString(),
}
METHODS = [m.name for m in SERVICE.methods]


def test_every_method_has_a_seed() -> None:
    assert set(SEEDS) == set(METHODS), "a new RPC needs a seed here"


async def _rows(aggregate: Aggregate) -> tuple[int, ...]:
    tables = await aggregate.db.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'aggregate' ORDER BY 1"
    )
    counts = []
    for row in tables:
        counts.append(int(await aggregate.db.fetchval(f'SELECT count(*) FROM aggregate."{row["table_name"]}"')))
    return tuple(counts)


async def _call(aggregate: Aggregate, method: str, body: bytes) -> grpc.StatusCode:
    return await call_raw(aggregate.channel_for(method), service_names.method_path(SERVICE, method), body)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(METHODS), choice=st.integers(0, 2), random_bytes=st.binary(max_size=512), data=st.data())
async def test_hostile_bytes_get_a_precise_status_and_apply_nothing(
    aggregate: Aggregate, method: str, choice: int, random_bytes: bytes, data: st.DataObject
) -> None:
    body = random_bytes if choice == 0 else data.draw(mutated(SEEDS[method]))
    before = await _rows(aggregate)
    await _call(aggregate, method, body)
    assert await _rows(aggregate) == before
    assert await _call(aggregate, "Changes", SEEDS["Changes"]) == grpc.StatusCode.OK


async def test_a_nul_in_a_string_is_refused_naming_the_field(aggregate: Aggregate) -> None:
    # Found by the fuzzing above: PostgreSQL text cannot hold U+0000, and the query failed as INTERNAL.
    body = aggregate_pb2.GetReconciliationRequest(area="\x001101", contest="ppwp").SerializeToString()
    call: Callable[..., object] = aggregate.channel_for("GetReconciliation").unary_unary(
        service_names.method_path(SERVICE, "GetReconciliation")
    )
    try:
        await call(body, timeout=10)  # type: ignore[misc]  # bytes in, bytes out
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_fields(error) == ["area"]
    else:
        raise AssertionError("a NUL in area was answered")
