"""contests.toml: the packaged contests, and clear errors for a bad file."""

from __future__ import annotations

from pathlib import Path

import pytest

from suara.election.contest import Choice
from suara.registry.contests import ContestConfigError, read_contests

PPWP_2024 = [
    ("100025", "H. ANIES RASYID BASWEDAN, Ph.D. - Dr. (H.C.) H. A. MUHAIMIN ISKANDAR", 1),
    ("100026", "H. PRABOWO SUBIANTO - GIBRAN RAKABUMING RAKA", 2),
    ("100027", "H. GANJAR PRANOWO, S.H., M.I.P. - Prof. Dr. H. M. MAHFUD MD", 3),
]


def test_the_packaged_contests() -> None:
    contests = {c.id: c for c in read_contests()}
    assert {"ppwp", "pdpr", "pkwkp"} <= set(contests)
    ppwp = contests["ppwp"]
    assert (ppwp.scope, ppwp.max_voters_per_tps) == ("", 300)
    assert [(c.id, c.nama, c.nomor_urut) for c in ppwp.choices] == PPWP_2024
    assert len({c.warna.lower() for c in ppwp.choices}) == 3
    pkwkp = contests["pkwkp"]
    assert (pkwkp.scope, pkwkp.max_voters_per_tps, len(pkwkp.choices)) == ("31", 600, 3)
    assert pkwkp.held_at("3171011001001") and not pkwkp.held_at("3201011001001")


def test_pdpr_has_parties_each_with_a_party_vote_and_candidates() -> None:
    pdpr = next(c for c in read_contests() if c.id == "pdpr")
    assert pdpr.scope == "" and 90 <= len(pdpr.choices) <= 120
    parties = [c for c in pdpr.choices if "-" not in c.id]
    assert len(parties) == 18
    for party in parties:
        candidates = [c for c in pdpr.choices if c.id.startswith(party.id + "-")]
        assert len(candidates) == 5, party
        assert {c.warna for c in candidates} == {party.warna}


def test_choice_ids_and_numbers_are_unique_per_contest() -> None:
    for contest in read_contests():
        assert len(contest.choice_ids) == len(contest.choices)
        assert len({c.nomor_urut for c in contest.choices}) == len(contest.choices)


GOOD_CHOICE = '{ id = "1", nama = "A", nomor_urut = 1, warna = "#112233" }'


def contest_toml(**fields: str) -> str:
    values = {
        "id": '"ppwp"',
        "name": '"Presiden"',
        "scope": '""',
        "max_voters_per_tps": "300",
        "choices": f"[{GOOD_CHOICE}]",
    }
    values.update(fields)
    return "[[contest]]\n" + "".join(f"{k} = {v}\n" for k, v in values.items() if v != "")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "contests.toml"
    path.write_text(text)
    return path


def test_a_minimal_file_reads(tmp_path: Path) -> None:
    (contest,) = read_contests(write(tmp_path, contest_toml()))
    assert contest.choices == (Choice("1", "A", 1, "#112233"),)


def test_kind_may_differ_from_the_id(tmp_path: Path) -> None:
    text = contest_toml(id='"pkwkk-3171"', kind='"pkwkk"', scope='"3171"', max_voters_per_tps="600")
    assert [c.id for c in read_contests(write(tmp_path, text))] == ["pkwkk-3171"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (contest_toml() + contest_toml(), "contest 'ppwp': id used twice"),
        (contest_toml(choices="[]"), "choices must be a non-empty list"),
        (contest_toml(choices=""), "choices must be a non-empty list"),
        (contest_toml(id='"pemilu"'), "unknown kind 'pemilu'"),
        (contest_toml(kind='"dpr"'), "unknown kind 'dpr'"),
        (contest_toml(choices=f"[{GOOD_CHOICE}, {GOOD_CHOICE}]"), "choice id '1' used twice"),
        (
            contest_toml(choices=f'[{GOOD_CHOICE}, {{ id = "2", nama = "B", nomor_urut = 1, warna = "#000000" }}]'),
            "nomor_urut 1 used twice",
        ),
        (contest_toml(choices='[{ id = "1", nama = "A", nomor_urut = 1, warna = "red" }]'), "warna 'red'"),
        (contest_toml(choices='[{ id = "1", nama = "A", nomor_urut = true, warna = "#000000" }]'), "nomor_urut"),
        (contest_toml(choices='[{ id = "1", nomor_urut = 1, warna = "#000000" }]'), "nama must be"),
        (contest_toml(name=""), "name must be a non-empty string"),
        (contest_toml(scope='"1"'), "scope '1'"),
        (contest_toml(id='"pkwkp"', max_voters_per_tps="600"), "a pkwkp contest needs a 2-digit scope"),
        (contest_toml(max_voters_per_tps="0"), "max_voters_per_tps must be between 1 and 600"),
        (contest_toml(colour='"#000000"'), "unknown keys ['colour']"),
        ("", "no [[contest]] tables"),
        ("[[contest]\n", "cannot read contests"),
    ],
)
def test_a_bad_file_is_rejected_naming_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ContestConfigError) as info:
        read_contests(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = contest_toml(id='"pemilu"') + contest_toml(id='"pdpr"', choices="[]")
    with pytest.raises(ContestConfigError) as info:
        read_contests(write(tmp_path, text))
    assert "contest 'pemilu': unknown kind" in str(info.value)
    assert "contest 'pdpr': choices must be" in str(info.value)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ContestConfigError, match="cannot read contests"):
        read_contests(tmp_path / "nope.toml")
