"""Form photos: checked by content, size-limited, bound to the signed form, stored once by SHA-256."""

from __future__ import annotations

import hashlib

import grpc
import pytest

from suara.v1 import tally_pb2
from tests.support.factories import consistent_form, jpeg, png, signed
from tests.support.rpc_errors import bad_fields, violations
from tests.support.tally import PHOTO_STORE, Tally


async def test_photos_are_stored_content_addressed_once(tally: Tally) -> None:
    photos = [jpeg(b"one"), png(b"two")]
    hashes = [hashlib.sha256(p).hexdigest() for p in photos]
    st = await tally.station()
    for version in (1, 2):  # the second version carries the same photos again
        form = consistent_form(st.tps, "ppwp", tally.contests["ppwp"], version=version)
        form.photo_sha256.extend(hashes)
        response = await tally.stub.Submit(signed(st.key, form, photos))
        assert response.outcome == tally_pb2.OUTCOME_ACCEPTED
    # The database keeps the hash, type and size; the bytes are in the photo store, not in PostgreSQL.
    rows = await tally.db.fetch("SELECT sha256, content_type, size, content FROM tally.photo ORDER BY content_type")
    assert [(r["sha256"], r["content_type"], r["size"], r["content"]) for r in rows] == [
        (hashes[0], "image/jpeg", len(photos[0]), None),
        (hashes[1], "image/png", len(photos[1]), None),
    ]
    for sha, content in zip(hashes, photos, strict=True):
        assert (PHOTO_STORE / sha[:2] / sha[2:4] / sha).read_bytes() == content
        got = (await tally.stub.GetPhoto(tally_pb2.GetPhotoRequest(sha256=sha))).photo
        assert (got.sha256, got.content) == (sha, content)


async def test_bad_photos_are_refused_naming_each(tally: Tally) -> None:
    st = await tally.station()
    not_image = b"GIF89a not allowed"
    unlisted = jpeg(b"not in the signed form")
    listed = [hashlib.sha256(not_image).hexdigest()]
    form = consistent_form(st.tps, "ppwp", tally.contests["ppwp"])
    form.photo_sha256.extend(listed)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tally.stub.Submit(signed(st.key, form, [not_image, unlisted]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == ["photos[0].content", "photos[1].content"]
    assert await tally.count("submission") == 0
    assert await tally.count("photo") == 0


async def test_oversized_photo_is_refused(tally: Tally) -> None:
    st = await tally.station()
    big = jpeg(b"x" * (tally.app.service.settings.photo_max_bytes + 1))
    form = consistent_form(st.tps, "ppwp", tally.contests["ppwp"])
    form.photo_sha256.append(hashlib.sha256(big).hexdigest())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tally.stub.Submit(signed(st.key, form, [big]))
    assert bad_fields(err.value) == ["photos[0].content"]


async def test_a_photo_is_checked_by_decoding_not_by_its_first_bytes(tally: Tally) -> None:
    """The finding: a "JPEG" whose bytes after the magic number are HTML was stored and published."""
    st = await tally.station()
    html = b"\xff\xd8\xff\xe0<html><script>alert(document.domain)</script></html>"
    truncated = jpeg(b"cut short")[:-20]
    png_html = b"\x89PNG\r\n\x1a\n<!doctype html><p>not a picture</p>"
    bad = [html, truncated, png_html]
    form = consistent_form(st.tps, "ppwp", tally.contests["ppwp"])
    form.photo_sha256.extend(hashlib.sha256(p).hexdigest() for p in bad)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tally.stub.Submit(signed(st.key, form, bad))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == ["photos[0].content", "photos[1].content", "photos[2].content"]
    assert all("does not decode" in why for why in violations(err.value).values())
    assert await tally.count("submission") == 0
    assert await tally.count("photo") == 0
