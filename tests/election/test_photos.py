"""suara.election.photos: a photo is a JPEG or PNG that decodes; anything else gets a reason, never an
exception, whatever its bytes."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from suara.election.photos import JPEG, PNG, problem, verified
from tests.support.factories import jpeg, png

GOOD = [jpeg(b"page"), png(b"page")]


def test_real_images_pass_and_their_hash_is_checked() -> None:
    for photo in GOOD:
        assert problem(photo) is None
        assert verified(photo, hashlib.sha256(photo).hexdigest()) is None
        assert "hash to" in (verified(photo, "0" * 64) or "")


@settings(max_examples=300, deadline=None)
@given(magic=st.sampled_from([JPEG[1], PNG[1]]), rest=st.binary(max_size=2000))
def test_magic_bytes_followed_by_anything_else_are_refused(magic: bytes, rest: bytes) -> None:
    assert problem(magic + rest) is not None


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_damaged_image_never_raises(data: st.DataObject) -> None:
    photo = bytearray(data.draw(st.sampled_from(GOOD)))
    for _ in range(data.draw(st.integers(1, 8))):
        photo[data.draw(st.integers(0, len(photo) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(photo)))
    result = problem(bytes(photo[:cut]))
    assert result is None or isinstance(result, str)
