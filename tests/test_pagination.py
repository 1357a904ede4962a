"""suara.runtime.pagination: page sizes, and tokens that resume after the right key or are refused."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from suara.runtime.pagination import InvalidPage, Pager

PAGER = Pager("ListThings", default_size=10, max_size=50, key_types=(str, int))
FILTERS = st.lists(st.one_of(st.text(max_size=8), st.integers(), st.booleans()), max_size=3)
KEYS = st.tuples(st.text(max_size=20), st.integers(-(2**63), 2**63 - 1))


@pytest.mark.parametrize(("requested", "size"), [(0, 10), (1, 1), (10, 10), (49, 49), (50, 50), (51, 50), (10**6, 50)])
def test_page_size_defaults_and_is_capped(requested: int, size: int) -> None:
    assert PAGER.size(requested) == size


def test_a_negative_page_size_is_invalid() -> None:
    with pytest.raises(InvalidPage) as caught:
        PAGER.size(-1)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.description) for v in caught.value.violations] == [
        ("page_size", "must not be negative, got -1")
    ]


@given(st.lists(KEYS, max_size=30, unique=True), st.integers(1, 31), FILTERS)
def test_pages_resume_after_the_last_key_and_end_with_an_empty_token(
    keys: list[tuple[str, int]], size: int, filters: list[object]
) -> None:
    rows = sorted(keys)
    seen: list[tuple[str, int]] = []
    token = ""
    while True:
        after = PAGER.after(token, filters)
        remaining = [k for k in rows if after is None or k > after]  # what a keyset query reads
        page, token = PAGER.page(remaining[: size + 1], size, lambda k: k, filters)
        assert len(page) <= size
        seen += page
        if not token:
            break
    assert seen == rows


@given(KEYS, FILTERS, FILTERS)
def test_a_token_is_refused_for_other_filters(key: tuple[str, int], filters: list[object], other: list[object]) -> None:
    _, token = PAGER.page([key, key], 1, lambda k: k, filters)
    assert PAGER.after(token, filters) == key
    if other != filters:
        with pytest.raises(InvalidPage) as caught:
            PAGER.after(token, other)
        assert [v.field for v in caught.value.violations] == ["page_token"]


def test_a_token_of_another_rpc_or_key_shape_is_refused() -> None:
    _, token = Pager("ListOthers", 10, 50, (str, int)).page([("a", 1), ("b", 2)], 1, lambda k: k, [])
    with pytest.raises(InvalidPage):
        PAGER.after(token, [])
    _, token = Pager("ListThings", 10, 50, (str,)).page([("a",), ("b",)], 1, lambda k: k, [])
    with pytest.raises(InvalidPage):
        PAGER.after(token, [])


@given(st.text(min_size=1, max_size=60))
def test_any_other_text_is_refused_as_a_token(text: str) -> None:
    with pytest.raises(InvalidPage) as caught:
        PAGER.after(text, [])
    assert [v.field for v in caught.value.violations] == ["page_token"]
