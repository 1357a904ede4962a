"""Photos live in the photo store, put there BEFORE their form commits: a committed form always has its
photos; a form that fails leaves at most an object nothing names; a photo gone from the store is a clear
error; rows from before the store (bytes in the database) are still served."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest

from suara.v1 import tally_pb2
from tests.support.factories import consistent_form, jpeg, png, signed
from tests.support.s3 import Bucket, bucket_name
from tests.support.tally import BASE_SETTINGS, Tally, start_tally, with_tally
from tests.support.waiting import poll_until


@pytest.fixture
async def own_store(db_url: str, db: asyncpg.Connection, tmp_path: Path) -> AsyncIterator[tuple[Tally, Path]]:
    """A tally whose photo store is a directory of the test's own."""
    root = tmp_path / "photos"
    t = await start_tally(db_url, db, with_tally(BASE_SETTINGS, photo_store=str(root)))
    yield t, root
    await t.close()


def _stored(root: Path) -> set[str]:
    return {p.name for p in root.rglob("*") if p.is_file()} if root.exists() else set()


async def _submit(tally: Tally, photos: list[bytes]) -> tuple[tally_pb2.SubmitRequest, list[str]]:
    st = await tally.station()
    hashes = [hashlib.sha256(p).hexdigest() for p in photos]
    form = consistent_form(st.tps, "ppwp", tally.contests["ppwp"])
    form.photo_sha256.extend(hashes)
    return signed(st.key, form, photos), hashes


async def test_a_form_whose_commit_fails_leaves_at_most_an_orphan_photo(
    own_store: tuple[Tally, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    tally, root = own_store
    request, hashes = await _submit(tally, [jpeg(b"page one"), png(b"page two")])

    async def failing_write(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the transaction failed")

    with monkeypatch.context() as m:
        m.setattr(tally.app.service.committer, "_write", failing_write)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await tally.stub.Submit(request)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert await tally.count("submission") == 0 and await tally.count("photo") == 0
    assert _stored(root) == set(hashes)  # orphans: harmless, nothing names them

    reply = await tally.stub.Submit(request)  # the device resends; the puts find the photos there
    assert reply.outcome == tally_pb2.OUTCOME_ACCEPTED
    assert await tally.count("photo") == 2 and _stored(root) == set(hashes)
    got = await tally.stub.GetPhoto(tally_pb2.GetPhotoRequest(sha256=hashes[1]))
    assert got.photo.content == png(b"page two")


async def test_a_photo_the_store_cannot_take_means_no_form(own_store: tuple[Tally, Path]) -> None:
    tally, root = own_store
    root.rmdir()
    root.write_bytes(b"")  # where the store's directory was, a file: every put fails
    request, _ = await _submit(tally, [jpeg(b"never stored")])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tally.stub.Submit(request)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "Resend it" in (err.value.details() or "")
    assert await tally.count("submission") == 0 and await tally.count("photo") == 0
    assert await tally.count("outbox") == 0


async def test_a_photo_missing_from_the_store_is_a_clear_error(own_store: tuple[Tally, Path]) -> None:
    tally, root = own_store
    request, (sha,) = await _submit(tally, [jpeg(b"lost later")])
    assert (await tally.stub.Submit(request)).outcome == tally_pb2.OUTCOME_ACCEPTED
    (root / sha[:2] / sha[2:4] / sha).unlink()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tally.stub.GetPhoto(tally_pb2.GetPhotoRequest(sha256=sha))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"photo {sha}" in (err.value.details() or "") and str(root) in (err.value.details() or "")
    # tally is still serving.
    request, _ = await _submit(tally, [])
    assert (await tally.stub.Submit(request)).outcome == tally_pb2.OUTCOME_ACCEPTED


async def test_a_photo_stored_in_the_database_before_the_store_is_still_served(
    own_store: tuple[Tally, Path],
) -> None:
    tally, root = own_store
    old = jpeg(b"from before migration 0008")
    sha = hashlib.sha256(old).hexdigest()
    await tally.db.execute(
        "INSERT INTO tally.photo (sha256, content_type, size, content) VALUES ($1, 'image/jpeg', $2, $3)",
        sha,
        len(old),
        old,
    )
    got = (await tally.stub.GetPhoto(tally_pb2.GetPhotoRequest(sha256=sha))).photo
    assert (got.content_type, got.content) == ("image/jpeg", old)
    assert _stored(root) == set()


async def test_two_tally_processes_share_one_store(
    db_url: str, db: asyncpg.Connection, own_store: tuple[Tally, Path]
) -> None:
    first, root = own_store
    second = await start_tally(db_url, db, with_tally(BASE_SETTINGS, photo_store=str(root)))
    try:
        request, (sha,) = await _submit(first, [png(b"sent to one, read from the other")])
        assert (await first.stub.Submit(request)).outcome == tally_pb2.OUTCOME_ACCEPTED
        got = (await second.stub.GetPhoto(tally_pb2.GetPhotoRequest(sha256=sha))).photo
        assert got.content == png(b"sent to one, read from the other")
    finally:
        await second.close()


async def test_a_tally_on_an_s3_photo_store_round_trips_its_photos(
    db_url: str, db: asyncpg.Connection, s3_endpoint: str, tmp_path: Path
) -> None:
    bucket = Bucket(s3_endpoint, bucket_name("tally-photos", tmp_path))
    settings = with_tally(BASE_SETTINGS, photo_store=f"s3://{bucket.name}/night", photo_store_endpoint_url=s3_endpoint)
    tally = await start_tally(db_url, db, settings)
    try:
        photos = [jpeg(b"into the bucket"), png(b"and this one")]
        request, hashes = await _submit(tally, photos)

        resent = []

        async def accepted() -> bool:
            # A new bucket's first writes wait for SeaweedFS to grow a volume, which on a loaded machine can
            # outlast the call's deadline: UNAVAILABLE, and the device resends the same bytes, as it would
            # (answered DUPLICATE if the commit of the unanswered call landed after all).
            try:
                reply = await tally.stub.Submit(request)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                resent.append(exc)
                return False
            allowed = {tally_pb2.OUTCOME_ACCEPTED} | ({tally_pb2.OUTCOME_DUPLICATE} if resent else set())
            assert reply.outcome in allowed, reply
            return True

        await poll_until(accepted, "the form with its photos accepted")
        assert set(bucket.etags()) == {f"night/{sha[:2]}/{sha}" for sha in hashes}
        assert await db.fetchval("SELECT count(*) FROM tally.photo WHERE content IS NOT NULL") == 0
        for sha, content in zip(hashes, photos, strict=True):
            got = (await tally.stub.GetPhoto(tally_pb2.GetPhotoRequest(sha256=sha))).photo
            assert got.content == content
    finally:
        await tally.close()
