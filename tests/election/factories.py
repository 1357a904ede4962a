"""Contests and a consistent base form for the election tests, built here, not from config."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from suara.election.contest import Choice, Contest

PPWP = Contest(
    id="ppwp",
    name="Presiden dan Wakil Presiden",
    scope="",
    max_voters_per_tps=300,
    choices=(
        Choice(id="100025", nama="Anies - Muhaimin", nomor_urut=1, warna="#8CB9BD"),
        Choice(id="100026", nama="Prabowo - Gibran", nomor_urut=2, warna="#ECB159"),
        Choice(id="100027", nama="Ganjar - Mahfud", nomor_urut=3, warna="#B67352"),
    ),
)
# A Pilkada held in one province only (DKI Jakarta, "31").
PKWKP_31 = Contest(
    id="pkwkp",
    name="Gubernur DKI Jakarta",
    scope="31",
    max_voters_per_tps=600,
    choices=(
        Choice(id="200001", nama="Paslon 1", nomor_urut=1, warna="#111111"),
        Choice(id="200002", nama="Paslon 2", nomor_urut=2, warna="#222222"),
    ),
)

TPS_JAKARTA = "3101011001001"
TPS_ACEH = "1101012001001"


def photo(n: int) -> str:
    return hashlib.sha256(f"photo-{n}".encode()).hexdigest()


# Every count sits well inside every rule, so one edit breaks exactly one of them:
# votes 80+50+20 = sah 150; sah + tidak_sah 7 = total 157 = users 157
# = dpt users 150 + DPTb 5 + DPK 2; limit 200 × 1.02 + 5 + 2 = 211.
_BASE: dict[str, Any] = {
    "tps": TPS_JAKARTA,
    "contest": "ppwp",
    "version": 1,
    "votes": {"100025": 80, "100026": 50, "100027": 20},
    "administrasi": {
        "suara_sah": 150,
        "suara_tidak_sah": 7,
        "suara_total": 157,
        "pemilih_dpt_j": 200,
        "pemilih_dpt_l": 100,
        "pemilih_dpt_p": 100,
        "pengguna_dpt_j": 150,
        "pengguna_dpt_l": 80,
        "pengguna_dpt_p": 70,
        "pengguna_dptb_j": 5,
        "pengguna_dptb_l": 3,
        "pengguna_dptb_p": 2,
        "pengguna_non_dpt_j": 2,
        "pengguna_non_dpt_l": 1,
        "pengguna_non_dpt_p": 1,
        "pengguna_total_j": 157,
        "pengguna_total_l": 84,
        "pengguna_total_p": 73,
    },
    "photo_sha256": [photo(1), photo(2)],
    "signed_at_unix_ms": 1_707_900_000_000,
}


def base_dict() -> dict[str, Any]:
    """A fresh copy of the consistent, well-formed base form as JSON."""
    return copy.deepcopy(_BASE)
