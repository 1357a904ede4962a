"""Each malformation and each inconsistency, alone, on an otherwise good form."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from suara.election.checks import (
    ALL_CHECKS,
    J_NE_L_PLUS_P,
    MAX_COUNT,
    OVER_DPT_LIMIT,
    SAH_TIDAK_SAH_NE_TOTAL,
    SUM_CHOICES_NE_SAH,
    TOTAL_GT_USERS,
    USERS_NE_PARTS,
    Violation,
    find_inconsistencies,
    find_malformed,
)
from suara.election.contest import Contest
from suara.election.form import form_from_dict
from suara.v1 import form_pb2
from tests.election.factories import PKWKP_31, PPWP, TPS_ACEH, base_dict, photo

Edit = Callable[[dict[str, Any]], None]


def _form(edit: Edit | None = None) -> form_pb2.CHasilForm:
    data = base_dict()
    if edit is not None:
        edit(data)
    return form_from_dict(data)


def test_the_base_form_passes_every_check() -> None:
    form = _form()
    assert find_malformed(form, contest=PPWP, tps_known=True) == []
    assert find_inconsistencies(form) == []


def test_the_check_names_are_stable() -> None:
    assert ALL_CHECKS == (
        "sum_choices_ne_suara_sah",
        "sah_plus_tidak_sah_ne_suara_total",
        "suara_total_gt_pengguna_total",
        "pengguna_total_ne_dpt_dptb_dpk",
        "j_ne_l_plus_p",
        "count_gt_dpt_limit",
    )


# --- malformed --------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    id: str
    edit: Edit
    expected: list[Violation]
    contest: Contest | None = PPWP
    tps_known: bool = True


def _set(path: str, value: object) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        target = data
        for p in parents:
            target = target[p]
        target[last] = value

    return edit


def _drop(path: str, *keys: str) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        target = data
        for p in path.split("/") if path else []:
            target = target[p]
        for key in keys:
            del target[key]

    return edit


def _both(*edits: Edit) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        for one in edits:
            one(data)

    return edit


def _pilkada(data: dict[str, Any]) -> None:
    """The base form as the DKI governor contest."""
    data["contest"] = "pkwkp"
    data["votes"] = {"200001": 100, "200002": 50}


def _negative(f: str, value: int = -3) -> Violation:
    return Violation(f, f"must be >= 0, got {value}")


def _absurd(f: str, value: int = MAX_COUNT + 1) -> Violation:
    return Violation(f, f"must be <= {MAX_COUNT} (no TPS has that many voters), got {value}")


def _missing(f: str) -> Violation:
    return Violation(f, "missing; expected a count >= 0")


SCALARS = ("suara_sah", "suara_tidak_sah", "suara_total")
TRIPLES = ("pemilih_dpt", "pengguna_dpt", "pengguna_dptb", "pengguna_non_dpt", "pengguna_total")
CHOICES = "expected 100025, 100026, 100027"
VERSION_RULE = "must be between 1 and 100 (the cap on versions of one form), got"
NOT_HEX = "must be a SHA-256 as 64 lowercase hex digits, got "


def _count_cases() -> list[Bad]:
    cases = []
    for name in SCALARS:
        cases += [
            Bad(f"{name}-missing", _drop("administrasi", name), [_missing(name)]),
            Bad(f"{name}-negative", _set(f"administrasi/{name}", -3), [_negative(name)]),
            Bad(f"{name}-absurd", _set(f"administrasi/{name}", MAX_COUNT + 1), [_absurd(name)]),
        ]
    for triple in TRIPLES:
        keys = [f"{triple}_{sex}" for sex in "jlp"]
        cases.append(
            Bad(
                f"{triple}-missing",
                _drop("administrasi", *keys),
                [Violation(triple, "missing; expected its j, l and p counts")],
            )
        )
        for sex, key in zip("jlp", keys, strict=True):
            at = f"{triple}.{sex}"
            cases += [
                Bad(f"{at}-missing", _drop("administrasi", key), [_missing(at)]),
                Bad(f"{at}-negative", _set(f"administrasi/{key}", -1), [_negative(at, -1)]),
                Bad(f"{at}-absurd", _set(f"administrasi/{key}", 2**40), [_absurd(at, 2**40)]),
            ]
    return cases


MALFORMED = [
    Bad(
        "tps-short",
        _set("tps", "310101100100"),
        [Violation("tps", "must be a 13-digit TPS code (desa code + 3-digit number), got '310101100100'")],
    ),
    Bad(
        "tps-letters",
        _set("tps", "31010110010a1"),
        [Violation("tps", "must be a 13-digit TPS code (desa code + 3-digit number), got '31010110010a1'")],
    ),
    Bad(
        "tps-malformed-for-a-scoped-contest",  # where it is held cannot be judged: one violation
        _both(_pilkada, _set("tps", "1101")),
        [Violation("tps", "must be a 13-digit TPS code (desa code + 3-digit number), got '1101'")],
        contest=PKWKP_31,
        tps_known=False,
    ),
    Bad(
        "tps-unknown",
        lambda d: None,
        [Violation("tps", "unknown TPS 3101011001001; expected a TPS of the registry")],
        tps_known=False,
    ),
    Bad(
        "contest-unknown",
        _set("contest", "pemilu"),
        [Violation("contest", "unknown contest 'pemilu'; expected a contest of this election")],
        contest=None,
    ),
    Bad(
        "contest-not-held-there",
        _both(_pilkada, _set("tps", TPS_ACEH)),
        [Violation("contest", f"pkwkp is not held at TPS {TPS_ACEH}; expected a TPS under area 31")],
        contest=PKWKP_31,
    ),
    Bad("version-zero", _set("version", 0), [Violation("version", f"{VERSION_RULE} 0")]),
    Bad(
        "version-negative",
        _set("version", -5),
        [Violation("version", f"{VERSION_RULE} -5")],
    ),
    Bad(
        "version-above-cap",
        _set("version", 101),
        [Violation("version", f"{VERSION_RULE} 101")],
    ),
    Bad(
        "version-at-int32-limit",
        _set("version", 2**31 - 1),
        [Violation("version", f"{VERSION_RULE} 2147483647")],
    ),
    Bad(
        "votes-unknown-choice",
        _set("votes/100099", 0),
        [Violation("votes[100099]", f"'100099' is not a choice of ppwp; {CHOICES}")],
    ),
    Bad(
        "votes-missing-choice",
        _drop("votes", "100027"),
        [Violation("votes[100027]", "missing; every choice needs a count, 0 if it got no votes")],
    ),
    Bad("votes-negative", _set("votes/100026", -3), [_negative("votes[100026]")]),
    Bad("votes-absurd", _set("votes/100025", 80_000), [_absurd("votes[100025]", 80_000)]),
    *_count_cases(),
    Bad(
        "photos-too-many",
        _set("photo_sha256", [photo(i) for i in range(4)]),
        [Violation("photo_sha256", "must list at most 3 photos, got 4")],
    ),
    Bad(
        "photo-uppercase",
        _set("photo_sha256", [photo(1).upper()]),
        [Violation("photo_sha256[0]", NOT_HEX + repr(photo(1).upper()[:37]) + "...")],
    ),
    Bad(
        "photo-short",
        _set("photo_sha256", [photo(1), "abc"]),
        [Violation("photo_sha256[1]", NOT_HEX + "'abc'")],
    ),
    Bad(
        "photo-duplicate",
        _set("photo_sha256", [photo(1), photo(2), photo(1)]),
        [Violation("photo_sha256[2]", "duplicate of photo_sha256[0]; list each photo once")],
    ),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[c.id for c in MALFORMED])
def test_each_malformation_alone(case: Bad) -> None:
    form = _form(case.edit)
    assert find_malformed(form, contest=case.contest, tps_known=case.tps_known) == case.expected


GOOD_EDGES: list[tuple[str, Edit]] = [
    ("count-at-max", _set("administrasi/suara_tidak_sah", MAX_COUNT)),
    ("zero-votes", _set("votes/100027", 0)),
    ("version-max", _set("version", 100)),
    ("no-photos", _set("photo_sha256", [])),
    ("three-photos", _set("photo_sha256", [photo(1), photo(2), photo(3)])),
    ("tps-9xx", _set("tps", "3101011002901")),
]


@pytest.mark.parametrize("edit", [e for _, e in GOOD_EDGES], ids=[i for i, _ in GOOD_EDGES])
def test_edges_that_are_well_formed(edit: Edit) -> None:
    assert find_malformed(_form(edit), contest=PPWP, tps_known=True) == []


def test_a_scoped_contest_is_held_inside_its_scope() -> None:
    assert find_malformed(_form(_pilkada), contest=PKWKP_31, tps_known=True) == []


def test_every_problem_is_reported_at_once_in_field_order() -> None:
    form = form_pb2.CHasilForm(tps="31", contest="ppwp", version=0, suara_sah=-1, suara_total=2)
    form.votes["100025"] = 5
    form.votes["x"] = -2
    form.pemilih_dpt.j = 3
    form.photo_sha256.extend(["nope", "nope"])
    fields = [v.field for v in find_malformed(form, contest=PPWP, tps_known=False)]
    assert fields == [
        "tps",
        "version",
        "votes[100026]",
        "votes[100027]",
        "votes[x]",
        "suara_sah",
        "suara_tidak_sah",
        "pemilih_dpt.l",
        "pemilih_dpt.p",
        "pengguna_dpt",
        "pengguna_dptb",
        "pengguna_non_dpt",
        "pengguna_total",
        "photo_sha256[0]",
        "photo_sha256[1]",
    ]


def test_a_contest_that_does_not_match_the_form_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="looked up contest"):
        find_malformed(_form(), contest=PKWKP_31, tps_known=True)


def test_descriptions_of_long_input_are_cut_short() -> None:
    (violation,) = find_malformed(_form(_set("tps", "9" * 500)), contest=PPWP, tps_known=False)
    assert len(violation.description) < 150


# --- inconsistent -----------------------------------------------------------


def _edits(**changes: int) -> Edit:
    """Set votes (by choice id, prefixed "v") and administrasi counts."""

    def edit(data: dict[str, Any]) -> None:
        for key, value in changes.items():
            if key.startswith("v"):
                data["votes"][key[1:]] = value
            else:
                data["administrasi"][key] = value

    return edit


INCONSISTENT = [
    (SUM_CHOICES_NE_SAH, _edits(v100027=19)),
    (SAH_TIDAK_SAH_NE_TOTAL, _edits(suara_tidak_sah=6)),
    # One more vote for everyone but the users: the sums still hold.
    (TOTAL_GT_USERS, _edits(v100027=21, suara_sah=151, suara_total=158)),
    (USERS_NE_PARTS, _edits(pengguna_total_j=158, pengguna_total_l=85)),
    (J_NE_L_PLUS_P, _edits(pemilih_dpt_l=101)),
    # 145 × 1.02 + 5 + 2 = 154.9 < 157
    (OVER_DPT_LIMIT, _edits(pemilih_dpt_j=145, pemilih_dpt_l=72, pemilih_dpt_p=73)),
]


@pytest.mark.parametrize(("check", "edit"), INCONSISTENT, ids=[c for c, _ in INCONSISTENT])
def test_each_inconsistency_alone(check: str, edit: Edit) -> None:
    form = _form(edit)
    assert find_malformed(form, contest=PPWP, tps_known=True) == []
    assert find_inconsistencies(form) == [check]


def test_several_inconsistencies_come_in_check_order_each_once() -> None:
    form = _form(_edits(pemilih_dpt_l=1, pengguna_dpt_l=1, v100025=0, suara_tidak_sah=0))
    assert find_inconsistencies(form) == [
        SUM_CHOICES_NE_SAH,
        SAH_TIDAK_SAH_NE_TOTAL,
        USERS_NE_PARTS,
        J_NE_L_PLUS_P,
    ]


def _at_the_limit(data: dict[str, Any]) -> None:
    """DPT 100 and nobody else: every count sits at exactly 100 × 1.02 = 102."""
    data["votes"] = {"100025": 100, "100026": 0, "100027": 0}
    data["administrasi"] = {
        **{f"{t}_{s}": 0 for t in TRIPLES for s in "jlp"},
        "suara_sah": 100,
        "suara_tidak_sah": 2,
        "suara_total": 102,
        **dict(pemilih_dpt_j=100, pemilih_dpt_l=50, pemilih_dpt_p=50),
        **dict(pengguna_dpt_j=102, pengguna_dpt_l=51, pengguna_dpt_p=51),
        **dict(pengguna_total_j=102, pengguna_total_l=51, pengguna_total_p=51),
    }


def test_the_base_of_the_limit_tests_is_at_the_limit() -> None:
    assert find_inconsistencies(_form(_at_the_limit)) == []


@pytest.mark.parametrize(
    ("registered", "voted", "over"),
    [
        (100, 102, False),
        (100, 103, True),
        (99, 100, False),  # limit 100.98
        (99, 101, True),
        (50, 51, False),  # limit 51 exactly
        (50, 52, True),
        (49, 49, False),  # limit 49.98
        (49, 50, True),
        (0, 0, False),
        (0, 1, True),
    ],
)
def test_the_dpt_limit_is_exact(registered: int, voted: int, over: bool) -> None:
    """Everyone who voted is on the DPT: `voted` against `registered` × 1.02."""

    def turnout(data: dict[str, Any]) -> None:
        _at_the_limit(data)
        data["votes"]["100025"] = voted
        data["administrasi"].update(
            suara_sah=voted,
            suara_tidak_sah=0,
            suara_total=voted,
            pemilih_dpt_j=registered,
            pemilih_dpt_l=registered,
            pemilih_dpt_p=0,
            pengguna_dpt_j=voted,
            pengguna_dpt_l=voted,
            pengguna_dpt_p=0,
            pengguna_total_j=voted,
            pengguna_total_l=voted,
            pengguna_total_p=0,
        )

    assert find_inconsistencies(_form(turnout)) == ([OVER_DPT_LIMIT] if over else [])


@pytest.mark.parametrize(
    "key", ["v100025", "suara_sah", "suara_tidak_sah", "suara_total", "pengguna_total_j", "pengguna_dpt_j"]
)
def test_each_counted_number_can_exceed_the_dpt_limit(key: str) -> None:
    def over(data: dict[str, Any]) -> None:
        _at_the_limit(data)
        _edits(**{key: 103})(data)

    assert OVER_DPT_LIMIT in find_inconsistencies(_form(over))


def test_dptb_and_dpk_raise_the_dpt_limit() -> None:
    def with_movers(data: dict[str, Any]) -> None:  # 100 × 1.02 + 10 + 5 = 117
        _at_the_limit(data)
        data["votes"]["100025"] = 115
        data["administrasi"].update(
            suara_sah=115,
            suara_total=117,
            pengguna_dptb_j=10,
            pengguna_dptb_l=5,
            pengguna_dptb_p=5,
            pengguna_non_dpt_j=5,
            pengguna_non_dpt_l=3,
            pengguna_non_dpt_p=2,
            pengguna_total_j=117,
            pengguna_total_l=59,
            pengguna_total_p=58,
        )

    assert find_inconsistencies(_form(with_movers)) == []
