"""Property tests: generated consistent forms, single perturbations, round trips."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from suara.election.checks import (
    J_NE_L_PLUS_P,
    MAX_COUNT,
    SAH_TIDAK_SAH_NE_TOTAL,
    SUM_CHOICES_NE_SAH,
    USERS_NE_PARTS,
    find_inconsistencies,
    find_malformed,
)
from suara.election.form import form_from_dict, form_to_dict
from suara.v1 import form_pb2
from tests.election.factories import PPWP
from tests.election.oracle import TRIPLES, expected_inconsistencies

INT64 = st.integers(-(2**63), 2**63 - 1)
SIGNED_AT_MS = st.integers(-62_135_596_800_000, 253_402_300_799_999)  # what a Timestamp holds, in Unix ms


@st.composite
def consistent_forms(draw: st.DrawFn) -> dict[str, Any]:
    """A form whose numbers add up, as the human JSON, built bottom-up."""

    def split(j: int) -> tuple[int, int, int]:
        """j, l, p with j = l + p."""
        men = draw(st.integers(0, j))
        return j, men, j - men

    dpt_users, dptb, dpk = (split(draw(st.integers(0, n))) for n in (3000, 500, 500))
    registered = split(draw(st.integers(dpt_users[0], 3000)))  # nobody votes twice from the DPT
    users = tuple(a + b + c for a, b, c in zip(dpt_users, dptb, dpk, strict=True))
    total = draw(st.integers(0, users[0]))
    tidak_sah = draw(st.integers(0, total))
    sah = total - tidak_sah
    first = draw(st.integers(0, sah))
    second = draw(st.integers(0, sah - first))
    photos = draw(st.lists(st.binary(max_size=8), max_size=3, unique=True))
    triples = dict(zip(TRIPLES, (registered, dpt_users, dptb, dpk, users), strict=True))
    return {
        "tps": draw(st.from_regex(r"[0-9]{13}", fullmatch=True)),
        "contest": "ppwp",
        "version": draw(st.integers(1, 100)),
        "votes": dict(
            zip(
                ("100025", "100026", "100027"),
                draw(st.permutations([first, second, sah - first - second])),
                strict=True,
            )
        ),
        "administrasi": {
            "suara_sah": sah,
            "suara_tidak_sah": tidak_sah,
            "suara_total": total,
            **{f"{t}_{s}": n for t, counts in triples.items() for s, n in zip("jlp", counts, strict=True)},
        },
        "photo_sha256": [hashlib.sha256(p).hexdigest() for p in photos],
        "signed_at_unix_ms": draw(SIGNED_AT_MS),
    }


@given(consistent_forms())
def test_consistent_forms_pass_every_check(data: dict[str, Any]) -> None:
    assert expected_inconsistencies(data["votes"], data["administrasi"]) == []  # the generator is right
    form = form_from_dict(data)
    assert find_malformed(form, contest=PPWP, tps_known=True) == []
    assert find_inconsistencies(form) == []


# What changing one number alone always breaks, whatever else it may break.
def _must_break(key: str) -> set[str]:
    if key.startswith("votes."):
        return {SUM_CHOICES_NE_SAH}
    if key == "suara_sah":
        return {SUM_CHOICES_NE_SAH, SAH_TIDAK_SAH_NE_TOTAL}
    if key in ("suara_tidak_sah", "suara_total"):
        return {SAH_TIDAK_SAH_NE_TOTAL}
    if key.startswith("pemilih_dpt_"):
        return {J_NE_L_PLUS_P}
    return {J_NE_L_PLUS_P, USERS_NE_PARTS}  # every pengguna_* count


@given(consistent_forms(), st.data())
def test_one_changed_number_is_reported_by_the_right_check(data: dict[str, Any], draws: st.DataObject) -> None:
    keys = [f"votes.{c}" for c in data["votes"]] + list(data["administrasi"])
    key = draws.draw(st.sampled_from(keys))
    section, name = key.split(".") if key.startswith("votes.") else ("administrasi", key)
    changed = copy.deepcopy(data)
    old = changed[section][name]
    # Within 0..MAX_COUNT: beyond it the form is malformed, not inconsistent.
    nearby = st.integers(max(0, old - 50), min(MAX_COUNT, old + 50)).filter(lambda n: n != old)
    changed[section][name] = draws.draw(nearby)

    form = form_from_dict(changed)
    assert find_malformed(form, contest=PPWP, tps_known=True) == []
    found = find_inconsistencies(form)
    assert _must_break(key) <= set(found)
    assert found == expected_inconsistencies(changed["votes"], changed["administrasi"])


@st.composite
def any_forms(draw: st.DrawFn) -> form_pb2.CHasilForm:
    """Any form at all, malformed ones included, with any counts present or absent."""
    form = form_pb2.CHasilForm(
        tps=draw(st.text(max_size=15)),
        contest=draw(st.text(max_size=8)),
        version=draw(INT64),
        photo_sha256=draw(st.lists(st.text(max_size=70), max_size=5)),
    )
    if draw(st.booleans()):  # the JSON says 0 for "not said", so a signing time at the epoch has no spelling
        form.signed_at.FromMilliseconds(draw(SIGNED_AT_MS.filter(bool)))
    form.votes.update(draw(st.dictionaries(st.text(max_size=8), INT64, max_size=4)))
    for name in ("suara_sah", "suara_tidak_sah", "suara_total"):
        if draw(st.booleans()):
            setattr(form, name, draw(INT64))
    for triple in TRIPLES:
        # A VoterCount present with none of j, l, p set has no flat-dict spelling; skip it.
        for sex in draw(st.sets(st.sampled_from("jlp"))):
            setattr(getattr(form, triple), sex, draw(INT64))
    return form


@given(any_forms())
def test_dict_round_trip(form: form_pb2.CHasilForm) -> None:
    assert form_from_dict(form_to_dict(form)) == form
    assert form_from_dict(json.loads(json.dumps(form_to_dict(form)))) == form
