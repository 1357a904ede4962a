"""ListSubmissions a page at a time (AIP-158): every submission once, in key order, stable under inserts."""

from __future__ import annotations

import grpc
import pytest

from suara.v1 import tally_pb2
from tests.support.factories import Station, consistent_form, signed
from tests.support.rpc_errors import bad_fields
from tests.support.tally import Tally

Key = tuple[str, int]


async def _submit(tally: Tally, st: Station, keys: list[Key]) -> None:
    items = [signed(st.key, consistent_form(st.tps, c, tally.contests[c], v)) for c, v in keys]
    for start in range(0, len(items), 1000):
        reply = await tally.stub.SubmitBatch(tally_pb2.SubmitBatchRequest(items=items[start : start + 1000]))
        assert all(r.outcome != tally_pb2.OUTCOME_REJECTED for r in reply.results), reply


async def _national_contests(tally: Tally, tps: str) -> list[str]:
    rows = await tally.db.fetch("SELECT id FROM registry.contest WHERE starts_with($1, scope) ORDER BY id", tps)
    return [r["id"] for r in rows]


async def _all_pages(tally: Tally, request: tally_pb2.ListSubmissionsRequest) -> list[list[Key]]:
    pages: list[list[Key]] = []
    while True:
        reply = await tally.admin.ListSubmissions(request)
        pages.append([(s.contest, s.version) for s in reply.submissions])
        if not reply.next_page_token:
            return pages
        request.page_token = reply.next_page_token


async def test_pages_of_every_size_cover_every_submission_once_in_key_order(tally: Tally) -> None:
    st = await tally.station()
    contests = (await _national_contests(tally, st.tps))[:3]
    keys = [(c, v) for c in contests for v in (1, 3, 2)]  # versions out of order: SUPERSEDED ones are listed too
    await _submit(tally, st, keys)
    everything = sorted(keys)
    for size in range(1, len(keys) + 2):
        pages = await _all_pages(tally, tally_pb2.ListSubmissionsRequest(tps=st.tps, page_size=size))
        assert [k for page in pages for k in page] == everything, size
        assert all(len(page) == size for page in pages[:-1])
        assert 1 <= len(pages[-1]) <= size
    one_contest = await _all_pages(tally, tally_pb2.ListSubmissionsRequest(tps=st.tps, contest=contests[1]))
    assert one_contest == [[k for k in everything if k[0] == contests[1]]]  # the default page holds them all


async def test_a_submission_stored_between_pages_is_never_repeated_or_shifts_a_page(tally: Tally) -> None:
    st = await tally.station()
    first, second = (await _national_contests(tally, st.tps))[:2]
    await _submit(tally, st, [(first, 2), (first, 3), (second, 1), (second, 2)])
    request = tally_pb2.ListSubmissionsRequest(tps=st.tps, page_size=2)
    page = await tally.admin.ListSubmissions(request)
    assert [(s.contest, s.version) for s in page.submissions] == [(first, 2), (first, 3)]
    await _submit(tally, st, [(first, 1), (second, 3)])  # one sorts before the cursor, one after
    request.page_token = page.next_page_token
    rest = await _all_pages(tally, request)
    assert [k for p in rest for k in p] == [(second, 1), (second, 2), (second, 3)]


async def test_the_page_size_has_a_default_and_a_maximum(tally: Tally) -> None:
    st = await tally.station()
    first, second = (await _national_contests(tally, st.tps))[:2]
    keys = sorted((c, v) for c in (first, second) for v in range(1, 101))  # every version the cap allows
    await _submit(tally, st, keys[:100])
    await _submit(tally, await tally.station(st.tps), keys[100:])  # a second device: each stays in its budget
    default = await tally.admin.ListSubmissions(tally_pb2.ListSubmissionsRequest(tps=st.tps))
    assert [(s.contest, s.version) for s in default.submissions] == keys[:50]
    capped = await tally.admin.ListSubmissions(tally_pb2.ListSubmissionsRequest(tps=st.tps, page_size=5000))
    assert [(s.contest, s.version) for s in capped.submissions] == keys[:100]  # lowered to the maximum, not refused
    last = await tally.admin.ListSubmissions(
        tally_pb2.ListSubmissionsRequest(tps=st.tps, page_size=5000, page_token=capped.next_page_token)
    )
    assert ([(s.contest, s.version) for s in last.submissions], last.next_page_token) == (keys[100:], "")


async def test_a_page_is_cut_at_a_megabyte_of_payloads(tally: Tally) -> None:
    st = await tally.station()
    await _submit(tally, st, [("ppwp", v) for v in range(1, 6)])
    # Payloads stored before unknown fields were refused can be large; a reply must stay bounded anyway.
    await tally.db.execute("UPDATE tally.submission SET payload = payload || repeat('x', 700000)::bytea")
    seen: list[int] = []
    request = tally_pb2.ListSubmissionsRequest(tps=st.tps, page_size=100)
    while True:
        reply = await tally.admin.ListSubmissions(request)
        assert reply.ByteSize() < 1024 * 1024 + 64 * 1024
        assert len(reply.submissions) == 1
        seen += [s.version for s in reply.submissions]
        if not reply.next_page_token:
            break
        request.page_token = reply.next_page_token
    assert seen == [1, 2, 3, 4, 5]


async def test_reads_of_submissions_need_a_credential(tally: Tally) -> None:
    st = await tally.station()
    await _submit(tally, st, [("ppwp", 1)])
    listed = await tally.admin.ListSubmissions(tally_pb2.ListSubmissionsRequest(tps=st.tps))
    submission_id = listed.submissions[0].receipt.submission_id
    for call in (
        tally.stub.ListSubmissions(tally_pb2.ListSubmissionsRequest(tps=st.tps)),
        tally.stub.GetSubmission(tally_pb2.GetSubmissionRequest(submission_id=submission_id)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"page_size": -1}, "page_size"),
        ({"page_token": "not a token"}, "page_token"),
        ({"page_token": "eyJxIjoiMCIsImsiOltdfQ"}, "page_token"),  # well-formed JSON, not ours
        ({"contest": "pdpr"}, "page_token"),  # the token of another request's filters
    ],
)
async def test_a_bad_page_size_or_foreign_token_is_named(tally: Tally, change: dict[str, object], field: str) -> None:
    st = await tally.station()
    await _submit(tally, st, [("ppwp", 1), ("ppwp", 2)])
    first = await tally.admin.ListSubmissions(tally_pb2.ListSubmissionsRequest(tps=st.tps, page_size=1))
    request = tally_pb2.ListSubmissionsRequest(tps=st.tps, page_size=1, page_token=first.next_page_token)
    for name, value in change.items():
        setattr(request, name, value)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tally.admin.ListSubmissions(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == [field]


async def test_a_token_is_bound_to_its_tps(tally: Tally) -> None:
    a, b = await tally.station(), await tally.station()
    await _submit(tally, a, [("ppwp", 1), ("ppwp", 2)])
    first = await tally.admin.ListSubmissions(tally_pb2.ListSubmissionsRequest(tps=a.tps, page_size=1))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tally.admin.ListSubmissions(
            tally_pb2.ListSubmissionsRequest(tps=b.tps, page_size=1, page_token=first.next_page_token)
        )
    assert bad_fields(err.value) == ["page_token"]
