"""An independent oracle of the consistency checks: plain Python over the
Sirekap-shaped JSON (chart/votes + flat administrasi), sharing no code with
suara.election and using exact fractions instead of scaled integers."""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction

TRIPLES = ("pemilih_dpt", "pengguna_dpt", "pengguna_dptb", "pengguna_non_dpt", "pengguna_total")


def expected_inconsistencies(votes: Mapping[str, int | None], adm: Mapping[str, int]) -> list[str]:
    counts = [n for choice, n in votes.items() if choice != "null" and n is not None]
    sah, tidak_sah, total = adm["suara_sah"], adm["suara_tidak_sah"], adm["suara_total"]
    found = []
    if sum(counts) != sah:
        found.append("sum_choices_ne_suara_sah")
    if sah + tidak_sah != total:
        found.append("sah_plus_tidak_sah_ne_suara_total")
    if total > adm["pengguna_total_j"]:
        found.append("suara_total_gt_pengguna_total")
    for sex in "jlp":
        parts = adm[f"pengguna_dpt_{sex}"] + adm[f"pengguna_dptb_{sex}"] + adm[f"pengguna_non_dpt_{sex}"]
        if adm[f"pengguna_total_{sex}"] != parts:
            found.append("pengguna_total_ne_dpt_dptb_dpk")
            break
    if any(adm[f"{t}_j"] != adm[f"{t}_l"] + adm[f"{t}_p"] for t in TRIPLES):
        found.append("j_ne_l_plus_p")
    limit = Fraction(102, 100) * adm["pemilih_dpt_j"] + adm["pengguna_dptb_j"] + adm["pengguna_non_dpt_j"]
    checked = [*counts, sah, tidak_sah, total, adm["pengguna_total_j"], adm["pengguna_dpt_j"]]
    if any(n > limit for n in checked):
        found.append("count_gt_dpt_limit")
    return found
