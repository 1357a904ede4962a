from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from suara.election import codes

TPS = "1101012001001"


def test_levels_of_the_examples() -> None:
    assert [codes.level_of(c) for c in ("11", "1101", "110101", "1101012001", TPS)] == [1, 2, 3, 4, 5]
    assert codes.prefixes(TPS) == ["11", "1101", "110101", "1101012001", TPS]
    assert codes.ancestors(TPS) == ["11", "1101", "110101", "1101012001"]
    assert codes.ancestors("11") == []
    assert codes.parent_of(TPS) == "1101012001"
    assert codes.parent_of("11") is None
    assert codes.is_tps_code(TPS)
    assert not codes.is_tps_code("1101012001")


def test_dotted_codes() -> None:
    assert codes.undotted("11.01.01.2001") == "1101012001"
    assert codes.undotted("11.01.01.2001.001") == TPS
    assert codes.undotted("1101012001") == "1101012001"  # already undotted
    assert codes.dotted("1101012001") == "11.01.01.2001"
    assert codes.dotted("11") == "11"


@pytest.mark.parametrize("bad", ["", "1", "123", "11a1", "١١", "11010120010011", "1101 012001"])
def test_level_of_rejects_what_is_no_area_code(bad: str) -> None:
    with pytest.raises(ValueError, match="not an area code"):
        codes.level_of(bad)
    assert not codes.is_tps_code(bad)


@pytest.mark.parametrize("bad", ["11.1", "11..01", "11.01.01.2001.001.1", "11.01.01.20a1", ".11", "1.101"])
def test_undotted_rejects_malformed_dotted_codes(bad: str) -> None:
    with pytest.raises(ValueError):
        codes.undotted(bad)


# The oracle: plain slicing at the known lengths.
_LENGTHS = {2: 1, 4: 2, 6: 3, 10: 4, 13: 5}
_CUTS = [(0, 2), (2, 4), (4, 6), (6, 10), (10, 13)]


def _oracle_level(code: str) -> int | None:
    return _LENGTHS.get(len(code)) if re.fullmatch(r"[0-9]*", code) else None


candidate_codes = st.one_of(
    st.sampled_from(sorted(_LENGTHS)).flatmap(lambda n: st.text("0123456789", min_size=n, max_size=n)),
    st.text("0123456789", max_size=15),
    st.text(max_size=15),
)


@given(candidate_codes)
def test_codes_agree_with_string_slicing(code: str) -> None:
    level = _oracle_level(code)
    assert codes.is_tps_code(code) == (level == 5)
    if level is None:
        with pytest.raises(ValueError):
            codes.level_of(code)
        return
    pieces = [code[a:b] for a, b in _CUTS[:level]]
    prefixes = ["".join(pieces[: i + 1]) for i in range(level)]
    assert codes.level_of(code) == level
    assert codes.prefixes(code) == prefixes
    assert codes.ancestors(code) == prefixes[:-1]
    assert codes.parent_of(code) == (prefixes[-2] if level > 1 else None)
    assert codes.dotted(code) == ".".join(pieces)
    assert codes.undotted(codes.dotted(code)) == code
    assert codes.undotted(code) == code
