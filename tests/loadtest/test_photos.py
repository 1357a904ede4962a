"""The form photos the demo and the load test send (loadtest/photos.py): real JPEGs of a C.Hasil page
that tally accepts, the same bytes for the same form, and cheap enough to say what they cost."""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

from loadtest.forms import make_form
from loadtest.photos import HEIGHT, PAGES, WIDTH, form_photos
from suara.election.photos import problem

CHOICES = ("100025", "100026", "100027")
NAMES = {"100025": "ANIES - MUHAIMIN", "100026": "PRABOWO - GIBRAN", "100027": "GANJAR - MAHFUD"}


def test_three_pages_that_tally_accepts_as_photos(record_property: Callable[[str, object], None]) -> None:
    form = make_form(2024, "3101011001001", "ppwp", 1, "ok", CHOICES)
    started = time.perf_counter()
    photos = form_photos(form, NAMES)
    seconds = time.perf_counter() - started
    assert len(photos) == PAGES
    for photo in photos:
        assert problem(photo) is None  # tally's own check: a JPEG that decodes whole
        with Image.open(io.BytesIO(photo)) as image:
            assert (image.format, image.size, image.mode) == ("JPEG", (WIDTH, HEIGHT), "RGB")
        assert 150_000 <= len(photo) <= 600_000  # a phone's photo of a page: a few hundred KB
    assert len(set(photos)) == PAGES
    record_property("figures", {"seconds_per_form": round(seconds, 3), "bytes": [len(p) for p in photos]})


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), version=st.integers(1, 3))
def test_the_same_form_gives_the_same_bytes_and_other_numbers_other_bytes(seed: int, version: int) -> None:
    form = make_form(seed, "3201011001002", "ppwp", version, "ok", CHOICES)
    again = make_form(seed, "3201011001002", "ppwp", version, "ok", CHOICES)
    first = form_photos(form, NAMES, pages=2)
    assert form_photos(again, NAMES, pages=2) == first  # a resend carries the photos its signature names
    other = make_form(seed, "3201011001002", "ppwp", version, "ok", CHOICES)
    other.votes["100026"] += 1
    other.suara_sah += 1
    assert form_photos(other, NAMES, pages=2)[1] != first[1]  # page 2 shows the votes


def test_a_form_has_three_pages() -> None:
    form = make_form(1, "3101011001001", "ppwp", 1, "ok", CHOICES)
    assert form_photos(form, NAMES, pages=0) == []
    with pytest.raises(ValueError, match="3 pages"):
        form_photos(form, NAMES, pages=4)


@settings(max_examples=6, deadline=None)
@given(choices=st.integers(1, 300))
@example(choices=111)  # the cluster's DPR stand-in, which broke the drawing once
def test_a_ballot_of_any_length_fits_its_page(choices: int) -> None:
    """DPR's ballot has its parties and every candidate (108 and more): page 2 still draws, every number
    on it."""
    ids = tuple(str(100_000 + i) for i in range(choices))
    form = make_form(7, "3101011001001", "pdpr", 1, "ok", ids)
    page = form_photos(form, {c: f"PARTAI {c}" for c in ids}, pages=2)[1]
    assert problem(page) is None
    with Image.open(io.BytesIO(page)) as image:
        assert image.size == (WIDTH, HEIGHT)
