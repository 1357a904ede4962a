"""The NIST SP 1500-100 v2 export validates against the published schema and carries exactly the input counts.

The oracle reads the report back the way a consumer would — GpUnits by their Kemendagri code,
selections by their candidate's choice id — and compares with the inputs; it never uses the
module's own id scheme.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.publish.nist import AreaResult, nist_json, nist_report
from suara.election.contest import Choice, Contest

# NIST SP 1500-100 rev 2's JSON schema (a work of the US government, public domain), as NIST publishes it.
SCHEMA_PATH = Path(__file__).resolve().parent / "nist-1500-100-v2-results.schema.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text())
VALIDATOR = jsonschema.Draft4Validator(SCHEMA, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)
# The properties that name another element by its @id: the schema marks them with (non-standard) refTypes.
REFERENCE_KEYS = frozenset(
    key
    for definition in SCHEMA["definitions"].values()
    for key, prop in definition.get("properties", {}).items()
    if "refTypes" in prop or "refTypes" in prop.get("items", {})
)
GENERATED = datetime(2024, 2, 16, 16, 25, 10, tzinfo=timezone(timedelta(hours=7)))

PPWP = Contest(
    id="ppwp",
    name="Pemilihan Presiden dan Wakil Presiden 2024",
    scope="",
    max_voters_per_tps=300,
    choices=(
        Choice(id="100025", nama="Anies - Muhaimin", nomor_urut=1, warna="#3C9A5F"),
        Choice(id="100026", nama="Prabowo - Gibran", nomor_urut=2, warna="#6EC1E4"),
        Choice(id="100027", nama="Ganjar - Mahfud", nomor_urut=3, warna="#C8102E"),
    ),
)


def area(
    code: str, name: str, votes: dict[str, int], *, tidak_sah: int = 3, tps: tuple[int, int] = (10, 7)
) -> AreaResult:
    sah = sum(votes.values())
    return AreaResult(
        code=code,
        name=name,
        votes=votes,
        suara_sah=sah,
        suara_tidak_sah=tidak_sah,
        suara_total=sah + tidak_sah,
        dpt=3 * (sah + tidak_sah) + 1,
        pengguna=sah + tidak_sah,
        tps_total=tps[0],
        tps_reported=tps[1],
    )


def national_of(provinces: Sequence[AreaResult], choices: Sequence[str]) -> AreaResult:
    """The national row as the sum of the provinces (the inputs' own arithmetic, not the module's)."""
    return AreaResult(
        code="",
        name="Indonesia",
        votes={c: sum(p.votes.get(c, 0) for p in provinces) for c in choices},
        suara_sah=sum(p.suara_sah for p in provinces),
        suara_tidak_sah=sum(p.suara_tidak_sah for p in provinces),
        suara_total=sum(p.suara_total for p in provinces),
        dpt=sum(p.dpt for p in provinces),
        pengguna=sum(p.pengguna for p in provinces),
        tps_total=sum(p.tps_total for p in provinces),
        tps_reported=sum(p.tps_reported for p in provinces),
    )


def errors(report: dict[str, Any]) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message[:200]}" for e in VALIDATOR.iter_errors(report)]


def read_back(report: dict[str, Any]) -> dict[str, Any]:
    """What a consumer gets out of the report, keyed by area code ("" national) and choice id."""
    units = {u["@id"]: u for u in report["GpUnit"]}
    code_of: dict[str, str] = {}
    for uid, u in units.items():
        idents = {i.get("Label") or i.get("OtherType"): i["Value"] for i in u["ExternalIdentifier"]}
        code_of[uid] = "" if u["Type"] == "country" else idents["kemendagri"]
    (election,) = report["Election"]
    choice_of = {
        c["@id"]: next(i["Value"] for i in c["ExternalIdentifier"] if i.get("OtherType") == "suara-choice-id")
        for c in election["Candidate"]
    }
    (contest,) = election["Contest"]
    votes: dict[str, dict[str, int | float]] = {code: {} for code in code_of.values()}
    for sel in contest["ContestSelection"]:
        (cand,) = sel["CandidateIds"]
        for vc in sel["VoteCounts"]:
            assert vc["Type"] == "total"
            assert choice_of[cand] not in votes[code_of[vc["GpUnitId"]]]  # one count per unit and choice
            votes[code_of[vc["GpUnitId"]]][choice_of[cand]] = vc["Count"]
    ballots = {code_of[b["GpUnitId"]]: (b["BallotsCast"], b["BallotsRejected"]) for b in election["BallotCounts"]}
    voters = {
        code_of[uid]: (u["VotersRegistered"], u["VotersParticipated"], u["TotalSubUnits"], u["SubUnitsReported"])
        for uid, u in units.items()
    }
    return {"votes": votes, "ballots": ballots, "voters": voters, "district": code_of[contest["ElectionDistrictId"]]}


def expected(contest: Contest, areas: Sequence[AreaResult]) -> dict[str, Any]:
    return {
        "votes": {a.code: {c.id: a.votes.get(c.id, 0) for c in contest.choices} for a in areas},
        "ballots": {a.code: (a.suara_total, a.suara_tidak_sah) for a in areas},
        "voters": {a.code: (a.dpt, a.pengguna, a.tps_total, a.tps_reported) for a in areas},
    }


def dangling_references(report: dict[str, Any]) -> list[str]:
    """Every reference names an @id in the report (jsonschema does not check the schema's refTypes)."""
    ids: list[str] = []
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "@id":
                    ids.append(value)
                elif key in REFERENCE_KEYS:
                    refs.extend(value if isinstance(value, list) else [value])
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(report)
    assert len(ids) == len(set(ids)), "duplicate @id"
    return [r for r in refs if r not in set(ids)]


def test_small_contest_validates_and_carries_the_counts() -> None:
    provinces = [
        area("31", "DKI JAKARTA", {"100025": 83, "100026": 107, "100027": 38}),
        area("11", "ACEH", {"100025": 500, "100026": 12}, tidak_sah=0, tps=(4, 4)),  # 100027 missing: 0
    ]
    national = national_of(provinces, ["100025", "100026", "100027"])
    report = nist_report(PPWP, generated_at=GENERATED, national=national, provinces=provinces)

    assert errors(report) == []
    assert dangling_references(report) == []
    got = read_back(report)
    assert got["district"] == ""
    assert {k: got[k] for k in ("votes", "ballots", "voters")} == expected(PPWP, [national, *provinces])
    assert got["votes"][""] == {"100025": 583, "100026": 119, "100027": 38}  # by hand
    assert report["GeneratedDate"] == "2024-02-16T09:25:10Z"  # WIB 16:25:10 in UTC
    assert report["Status"] == "unofficial-partial"  # 11 of 14 TPS
    (election,) = report["Election"]
    assert (election["StartDate"], election["EndDate"]) == ("2024-02-14", "2024-02-14")
    assert [p["FullName"]["Text"][0]["Content"] for p in report["Person"]] == [c.nama for c in PPWP.choices]


def test_validator_rejects_a_broken_report() -> None:
    """The schema check has teeth: it is not passing everything."""
    provinces = [area("31", "DKI JAKARTA", {"100025": 1})]
    good = nist_report(PPWP, generated_at=GENERATED, national=national_of(provinces, ["100025"]), provinces=provinces)
    assert errors(good) == []
    broken = [copy.deepcopy(good) for _ in range(3)]
    del broken[0]["Status"]
    broken[1]["GpUnit"][0]["Type"] = "province"
    broken[2]["Election"][0]["Contest"][0]["ContestSelection"][0]["VoteCounts"][0]["Count"] = "83"
    for report in broken:
        assert errors(report) != []


def test_party_choices_scope_and_completion() -> None:
    """A contest held in one province is over that province; party-list choices are Parties with their colour."""
    contest = Contest(
        id="pdprdp-31",
        name="DPRD Provinsi DKI Jakarta",
        scope="31",
        max_voters_per_tps=300,
        choices=(
            Choice(id="p01", nama="Partai Satu", nomor_urut=100, warna="#00864A"),
            Choice(id="p01-1", nama="Caleg 1", nomor_urut=101, warna="#00864A"),
        ),
    )
    jakarta = area("31", "DKI JAKARTA", {"p01": 10, "p01-1": 4}, tps=(5, 5))
    national = national_of([jakarta], ["p01", "p01-1"])
    report = nist_report(contest, generated_at=GENERATED, national=national, provinces=[jakarta], party_ids={"p01"})
    assert errors(report) == []
    assert dangling_references(report) == []
    got = read_back(report)
    assert got["district"] == "31"
    assert got["votes"] == {"": {"p01": 10, "p01-1": 4}, "31": {"p01": 10, "p01-1": 4}}
    assert [(p["Name"]["Text"][0]["Content"], p["Color"]) for p in report["Party"]] == [("Partai Satu", "00864a")]
    assert [p["FullName"]["Text"][0]["Content"] for p in report["Person"]] == ["Caleg 1"]
    assert report["Status"] == "unofficial-complete"
    assert report["Election"][0]["Contest"][0]["CountStatus"][0]["Status"] == "completed"


def test_same_input_same_bytes() -> None:
    provinces = [area(code, f"P{code}", {"100025": int(code), "100026": 1}) for code in ("11", "31", "94")]
    national = national_of(provinces, ["100025", "100026", "100027"])
    first = nist_json(nist_report(PPWP, generated_at=GENERATED, national=national, provinces=provinces))
    again = nist_json(nist_report(PPWP, generated_at=GENERATED, national=national, provinces=provinces))
    shuffled = nist_json(nist_report(PPWP, generated_at=GENERATED, national=national, provinces=provinces[::-1]))
    assert first == again == shuffled
    assert json.loads(first) == nist_report(PPWP, generated_at=GENERATED, national=national, provinces=provinces)
    assert first == json.dumps(json.loads(first), ensure_ascii=False, separators=(",", ":")).encode()  # compact
    assert "Ü".encode() in nist_json({"Name": "Ü"})  # UTF-8, not \u escapes


def test_bad_input_is_refused() -> None:
    jakarta = area("31", "DKI JAKARTA", {"100025": 1})
    national = national_of([jakarta], ["100025"])
    with pytest.raises(ValueError, match="timezone"):
        nist_report(PPWP, generated_at=datetime(2024, 2, 16), national=national, provinces=[jakarta])
    with pytest.raises(ValueError, match="999"):
        nist_report(PPWP, generated_at=GENERATED, national=area("", "X", {"999": 1}), provinces=[jakarta])
    with pytest.raises(ValueError, match="distinct"):
        nist_report(PPWP, generated_at=GENERATED, national=national, provinces=[jakarta, jakarta])
    with pytest.raises(ValueError, match="national"):
        nist_report(PPWP, generated_at=GENERATED, national=jakarta, provinces=[])


_CHOICE_IDS = st.lists(st.from_regex(r"[0-9a-z][0-9a-z-]{0,7}", fullmatch=True), min_size=1, max_size=6, unique=True)
_CODES = st.lists(st.integers(11, 99).map(str), max_size=6, unique=True)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), choice_ids=_CHOICE_IDS, codes=_CODES)
def test_any_counts_validate_and_round_trip(data: st.DataObject, choice_ids: list[str], codes: list[str]) -> None:
    contest = Contest(
        id="ppwp",
        name="Uji",
        scope="",
        max_voters_per_tps=300,
        choices=tuple(
            Choice(id=c, nama=f"Pilihan {c} ✓", nomor_urut=i + 1, warna="#ABCDEF") for i, c in enumerate(choice_ids)
        ),
    )
    party_ids = data.draw(st.sets(st.sampled_from(choice_ids)))
    provinces = []
    for code in codes:
        votes = data.draw(st.dictionaries(st.sampled_from(choice_ids), st.integers(0, 10**9)))
        reported = data.draw(st.integers(0, 50))
        provinces.append(
            area(code, f"Provinsi {code}", votes, tidak_sah=data.draw(st.integers(0, 10**6)), tps=(50, reported))
        )
    national = national_of(provinces, choice_ids)
    report = nist_report(
        contest,
        generated_at=datetime(2024, 2, 14, tzinfo=UTC) + timedelta(seconds=data.draw(st.integers(0, 10**7))),
        national=national,
        provinces=provinces,
        election_date=date(2024, 2, 14),
        party_ids=party_ids,
    )
    assert errors(report) == []
    assert dangling_references(report) == []
    got = read_back(json.loads(nist_json(report)))  # through the bytes, as a consumer gets it
    assert {k: got[k] for k in ("votes", "ballots", "voters")} == expected(contest, [national, *provinces])
