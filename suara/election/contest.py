"""Contests (Sirekap's `jenis`) and their choices."""

from __future__ import annotations

from dataclasses import dataclass

CONTEST_KINDS = ("ppwp", "pdpr", "pdpd", "pdprdp", "pdprdk", "pkwkp", "pkwkk")


@dataclass(frozen=True)
class Choice:
    id: str  # stable id, e.g. "100025"
    nama: str
    nomor_urut: int
    warna: str  # "#RRGGBB", for charts


@dataclass(frozen=True)
class Contest:
    id: str  # e.g. "ppwp"
    name: str
    # Where it is held: "" nationwide, or the code of the one province or
    # kabupaten/kota it is held in (a TPS takes part if its code starts with it).
    scope: str
    max_voters_per_tps: int  # 300 in a Pemilu, 600 in a Pilkada
    choices: tuple[Choice, ...]

    @property
    def choice_ids(self) -> frozenset[str]:
        return frozenset(c.id for c in self.choices)

    def held_at(self, tps: str) -> bool:
        return tps.startswith(self.scope)
