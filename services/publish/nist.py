"""National and provincial results of one contest as a NIST SP 1500-100 rev 2 JSON ElectionReport.

The mapping (schema: shared/reference/nist-1500-100-v2-results.schema.json):
- GpUnit: a ReportingUnit for the country (Type country) and for each area given (a province is a
  `state`, a kabupaten/kota a `county`), with the Kemendagri code as ExternalIdentifier, DPT as
  VotersRegistered, voters who came (pengguna hak pilih) as VotersParticipated, and TPS as the
  sub-units (TotalSubUnits, SubUnitsReported).
- Each choice is a Candidate (BallotName `nama`, the choice id as ExternalIdentifier) backed by a
  Person, or by a Party for the choices named in `party_ids` (a vote for a party list).
- One CandidateContest over the contest's scope; each CandidateSelection has a VoteCounts of Type
  `total` per GpUnit.
- Ballots: each contest has its own ballot paper, so the Election's BallotCounts are this contest's:
  BallotsCast = suara_total, BallotsRejected = suara_tidak_sah. The schema's OtherCounts only knows
  overvotes, undervotes and write-ins, and a C.Hasil form does not say why a ballot was invalid, so
  invalid ballots are not put there.

The output is a plain dict built in a fixed order from the inputs only (ids come from codes and choice
ids), so the same input always gives the same bytes from `nist_json`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from suara.election.contest import Contest

_T = "ElectionResults."
_LANGUAGE = "id"  # the names are Indonesian
# NIST's ReportingUnitType by the length of a Kemendagri code; what has no close match is `other`.
_UNIT_TYPES = {0: ("country", ""), 2: ("state", ""), 4: ("county", ""), 6: ("other", "kecamatan"), 10: ("village", "")}
_COLOR = re.compile(r"#?([0-9a-fA-F]{6})")


@dataclass(frozen=True)
class AreaResult:
    """One area's totals of the contest: national when `code` is ""."""

    code: str
    name: str
    votes: Mapping[str, int]  # choice id → votes; a choice missing here has 0
    suara_sah: int
    suara_tidak_sah: int
    suara_total: int
    dpt: int
    pengguna: int
    tps_total: int
    tps_reported: int


def _text(content: str) -> dict[str, Any]:
    return {
        "@type": _T + "InternationalizedText",
        "Text": [{"@type": _T + "LanguageString", "Content": content, "Language": _LANGUAGE}],
    }


def _external_id(value: str, *, kind: str = "other", other: str = "", label: str = "") -> dict[str, Any]:
    ident: dict[str, Any] = {"@type": _T + "ExternalIdentifier", "Type": kind, "Value": value}
    if other:
        ident["OtherType"] = other
    if label:
        ident["Label"] = label
    return ident


def _choice_ids(choice_id: str) -> list[dict[str, Any]]:
    # A fresh list for each entry that names the choice: no object is shared inside the report.
    return [_external_id(choice_id, other="suara-choice-id")]


def _unit_id(code: str) -> str:
    return f"gpu-{code}" if code else "gpu-national"


def _reporting_unit(area: AreaResult, composing: Sequence[str]) -> dict[str, Any]:
    unit_type, other_type = _UNIT_TYPES.get(len(area.code), ("other", "wilayah"))
    unit: dict[str, Any] = {"@type": _T + "ReportingUnit", "@id": _unit_id(area.code), "Type": unit_type}
    if other_type:
        unit["OtherType"] = other_type
    unit["Name"] = _text(area.name)
    unit["ExternalIdentifier"] = (
        [_external_id(area.code, kind="national-level", label="kemendagri")]
        if area.code
        else [_external_id("ID", other="iso-3166-1")]
    )
    if composing:
        unit["ComposingGpUnitIds"] = list(composing)
    unit["VotersRegistered"] = area.dpt
    unit["VotersParticipated"] = area.pengguna
    unit["TotalSubUnits"] = area.tps_total
    unit["SubUnitsReported"] = area.tps_reported
    return unit


def nist_report(
    contest: Contest,
    *,
    generated_at: datetime,
    national: AreaResult,
    provinces: Sequence[AreaResult],
    election_name: str = "Pemilihan Umum 2024",
    election_date: date = date(2024, 2, 14),
    vendor: str = "suara",
    party_ids: Collection[str] = (),
) -> dict[str, Any]:
    """The ElectionReport; `party_ids` are the choices that are votes for a party rather than a person."""
    if generated_at.tzinfo is None:
        raise ValueError("generated_at must be timezone-aware (the report states its zone)")
    if national.code:
        raise ValueError(f"the national result has code '', not {national.code!r}")
    areas = sorted(provinces, key=lambda a: a.code)  # the caller's order must not change the bytes
    codes = [a.code for a in areas]
    if "" in codes or len(set(codes)) != len(codes):
        raise ValueError(f"area codes must be non-empty and distinct: {codes}")
    known = contest.choice_ids
    for area in (national, *areas):
        unknown = set(area.votes) - known
        if unknown:
            raise ValueError(f"votes for choices not in {contest.id}: {sorted(unknown)} in area {area.code!r}")

    units = [national, *areas]
    country_id = _unit_id("")
    gp_units = [_reporting_unit(national, [_unit_id(c) for c in codes])] + [_reporting_unit(a, ()) for a in areas]
    # A contest held in one province (or kabupaten/kota) is over that area when it is among the units;
    # otherwise the national row, which then holds only the scope's votes, stands for it.
    district_id = _unit_id(contest.scope) if contest.scope in codes else country_id

    parties: list[dict[str, Any]] = []
    persons: list[dict[str, Any]] = []
    candidates: list[dict[str, Any]] = []
    selections: list[dict[str, Any]] = []
    for choice in sorted(contest.choices, key=lambda c: (c.nomor_urut, c.id)):
        candidate: dict[str, Any] = {
            "@type": _T + "Candidate",
            "@id": f"cand-{choice.id}",
            "BallotName": _text(choice.nama),
            "ExternalIdentifier": _choice_ids(choice.id),
        }
        if choice.id in party_ids:
            party: dict[str, Any] = {
                "@type": _T + "Party",
                "@id": f"party-{choice.id}",
                "Name": _text(choice.nama),
                "ExternalIdentifier": _choice_ids(choice.id),
            }
            if color := _COLOR.fullmatch(choice.warna):
                party["Color"] = color.group(1).lower()  # the schema's HtmlColorString: 6 lower-case hex digits
            parties.append(party)
            candidate["PartyId"] = party["@id"]
        else:
            person_id = f"person-{choice.id}"
            persons.append(
                {
                    "@type": _T + "Person",
                    "@id": person_id,
                    "FullName": _text(choice.nama),
                    "ExternalIdentifier": _choice_ids(choice.id),
                }
            )
            candidate["PersonId"] = person_id
        candidates.append(candidate)
        selections.append(
            {
                "@type": _T + "CandidateSelection",
                "@id": f"sel-{contest.id}-{choice.id}",
                "CandidateIds": [candidate["@id"]],
                "SequenceOrder": choice.nomor_urut,
                "VoteCounts": [
                    {
                        "@type": _T + "VoteCounts",
                        "GpUnitId": _unit_id(u.code),
                        "Type": "total",
                        "Count": u.votes.get(choice.id, 0),
                    }
                    for u in units
                ],
            }
        )

    complete = national.tps_total > 0 and national.tps_reported >= national.tps_total
    candidate_contest: dict[str, Any] = {
        "@type": _T + "CandidateContest",
        "@id": f"contest-{contest.id}",
        "Name": contest.name,
        "Abbreviation": contest.id,
        "ExternalIdentifier": [_external_id(contest.id, other="suara-contest-id")],
        "ElectionDistrictId": district_id,
        "VotesAllowed": 1,
        "CountStatus": [
            {"@type": _T + "CountStatus", "Type": "total", "Status": "completed" if complete else "in-process"}
        ],
        "TotalSubUnits": national.tps_total,
        "SubUnitsReported": national.tps_reported,
        "ContestSelection": selections,
    }
    election: dict[str, Any] = {
        "@type": _T + "Election",
        "Name": _text(election_name),
        "Type": "general",
        "StartDate": election_date.isoformat(),
        "EndDate": election_date.isoformat(),
        "ElectionScopeId": country_id,
        "BallotCounts": [
            {
                "@type": _T + "BallotCounts",
                "GpUnitId": _unit_id(u.code),
                "Type": "total",
                "BallotsCast": u.suara_total,
                "BallotsRejected": u.suara_tidak_sah,
            }
            for u in units
        ],
        "Candidate": candidates,
        "Contest": [candidate_contest],
    }
    report: dict[str, Any] = {
        "@type": _T + "ElectionReport",
        "Format": "summary-contest",
        "GeneratedDate": generated_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "Issuer": vendor,
        "IssuerAbbreviation": vendor,
        "VendorApplicationId": vendor,
        "SequenceStart": 1,
        "SequenceEnd": 1,
        "Status": "unofficial-complete" if complete else "unofficial-partial",
        "Notes": (
            "Digital count of the C.Hasil forms of the TPS counted so far, not the official tiered recap "
            "(rekapitulasi berjenjang). Sub-units are TPS; BallotsRejected are invalid ballots (suara tidak sah)."
        ),
        "GpUnit": gp_units,
    }
    if parties:
        report["Party"] = parties
    if persons:
        report["Person"] = persons
    report["Election"] = [election]
    return report


def nist_json(report: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON in the report's own key order (stable input → stable bytes)."""
    return json.dumps(report, ensure_ascii=False, separators=(",", ":")).encode()
