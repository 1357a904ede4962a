"""Contests (Sirekap's `jenis`), their electoral districts (dapil) and their choices."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from suara.election.codes import LENGTHS

CONTEST_KINDS = ("ppwp", "pdpr", "pdpd", "pdprdp", "pdprdk", "pkwkp", "pkwkk")
# Seats a district of each kind elects (inclusive). DPR: 3-10 per district, DPRD 3-12 (UU 7/2017);
# DPD 4 per province; one president, governor, regent or mayor.
SEATS = {
    "ppwp": (1, 1),
    "pdpr": (3, 10),
    "pdpd": (4, 4),
    "pdprdp": (3, 12),
    "pdprdk": (3, 12),
    "pkwkp": (1, 1),
    "pkwkk": (1, 1),
}
# The code of the one district of a nationwide contest without a district map.
NATIONAL_DISTRICT = "00"


@dataclass(frozen=True)
class Choice:
    id: str  # stable id, e.g. "100025"; unique in its contest
    nama: str
    nomor_urut: int  # ballot number: unique among the choices on one ballot (a candidate's: within its party)
    warna: str  # "#RRGGBB", for charts
    # None: on the ballot of every district of the contest (ppwp's paslon, the parties), within
    # `region`; else the code of the one district it stands in (a candidate, a Pilkada pair).
    district: str | None = None
    party: str | None = None  # a candidate's party: the id of another choice of the contest
    region: str = ""  # a shared choice stands only where this code prefixes (Aceh's local parties: "11")


@dataclass(frozen=True)
class District:
    """An electoral district (dapil): the areas it covers, each by its code, and the seats it elects."""

    code: str
    name: str
    seats: int
    areas: tuple[str, ...]  # area codes, none a prefix of another; a TPS is in it if one prefixes its code


@dataclass(frozen=True)
class Contest:
    id: str  # e.g. "ppwp"
    name: str
    # Where it is held: "" nationwide, or the code of the one province or
    # kabupaten/kota it is held in (a TPS takes part if its code starts with it).
    # A contest with districts is held where they are; its scope only says where they lie.
    scope: str
    max_voters_per_tps: int  # 300 in a Pemilu, 600 in a Pilkada
    choices: tuple[Choice, ...]
    # Its districts; () for a contest of one district, its scope (as contests.toml describes them).
    districts: tuple[District, ...] = ()
    kind: str = ""  # one of CONTEST_KINDS; "" means the id is the kind

    @property
    def jenis(self) -> str:
        return self.kind or self.id

    @property
    def choice_ids(self) -> frozenset[str]:
        return frozenset(c.id for c in self.choices)

    @cached_property
    def all_districts(self) -> tuple[District, ...]:
        """Its districts; a contest described by its scope alone is one district, its scope."""
        if self.districts:
            return self.districts
        return (District(self.scope or NATIONAL_DISTRICT, self.name, SEATS.get(self.jenis, (1, 1))[0], (self.scope,)),)

    @cached_property
    def _district_by_area(self) -> dict[str, District]:
        return {area: d for d in self.all_districts for area in d.areas}

    @cached_property
    def _ballots(self) -> dict[str, tuple[Choice, ...]]:
        numbers = {c.id: c.nomor_urut for c in self.choices}
        shared = [c for c in self.choices if c.district is None]
        own: dict[str, list[Choice]] = {}
        for c in self.choices:
            if c.district is not None:
                own.setdefault(c.district, []).append(c)
        ballots: dict[str, tuple[Choice, ...]] = {}
        for d in self.all_districts:
            on = [c for c in shared if all(a.startswith(c.region) for a in d.areas)] + own.get(d.code, [])
            # Ballot order: by number, each party followed by its candidates.
            on.sort(key=lambda c: (numbers[c.party], 1, c.nomor_urut) if c.party else (c.nomor_urut, 0, 0))
            ballots[d.code] = tuple(on)
        return ballots

    def district_of(self, tps: str) -> District | None:
        """The district TPS `tps` votes in, or None where the contest is not held."""
        by_area = self._district_by_area
        for n in (0, *LENGTHS[:-1]):
            if n <= len(tps) and (found := by_area.get(tps[:n])) is not None:
                return found
        return None

    def choices_at(self, tps: str) -> tuple[Choice, ...]:
        """The choices on the ballot at TPS `tps`, in ballot order; () where the contest is not held."""
        district = self.district_of(tps)
        return () if district is None else self._ballots[district.code]

    def ballot(self, district: str) -> tuple[Choice, ...]:
        """The choices on district `district`'s ballot, in ballot order."""
        return self._ballots[district]

    def held_at(self, tps: str) -> bool:
        if not self.districts:
            return tps.startswith(self.scope)
        return self.district_of(tps) is not None
