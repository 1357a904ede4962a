"""The 53 real Sirekap TPS files (Kepulauan Seribu, ppwp 2024) through the checks,
against the plain-Python oracle over the JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from suara.election.checks import find_inconsistencies, find_malformed
from suara.election.form import administrasi_of, counts_of, form_from_sirekap
from tests.election.factories import PPWP
from tests.election.oracle import expected_inconsistencies

# A copy of shared/reference/sirekap-tps-samples, so the suite needs nothing outside the repo.
SAMPLES = Path(__file__).parent / "sirekap-tps-samples"
FILES = sorted(SAMPLES.glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_all_53_samples_are_here() -> None:
    assert len(FILES) == 53


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_sample_checks_agree_with_the_oracle(path: Path) -> None:
    data = _load(path)
    form = form_from_sirekap(path.stem, "ppwp", 1, data)
    if data["chart"] is None or data["administrasi"] is None:
        assert form is None
        return
    assert form is not None
    assert find_malformed(form, contest=PPWP, tps_known=True) == []
    assert find_inconsistencies(form) == expected_inconsistencies(data["chart"], data["administrasi"])
    assert administrasi_of(form) == data["administrasi"]
    votes = {k: v for k, v in data["chart"].items() if k != "null"}
    assert counts_of(form) == {"votes": votes, **data["administrasi"]}


def test_the_samples_hold_real_inconsistencies() -> None:
    """Pinned from the files, so an oracle that found nothing would not pass unnoticed."""
    found = {}
    for path in FILES:
        data = _load(path)
        if data["chart"] is not None and data["administrasi"] is not None:
            found[path.stem] = expected_inconsistencies(data["chart"], data["administrasi"])
    assert len(found) == 28
    assert {tps: checks for tps, checks in found.items() if checks} == {
        "3101011001001": ["pengguna_total_ne_dpt_dptb_dpk"],
        "3101011001003": ["sum_choices_ne_suara_sah", "pengguna_total_ne_dpt_dptb_dpk", "j_ne_l_plus_p"],
        "3101011001013": ["suara_total_gt_pengguna_total", "count_gt_dpt_limit"],
        "3101011003001": ["sum_choices_ne_suara_sah"],
        "3101011003008": ["sum_choices_ne_suara_sah", "count_gt_dpt_limit"],
    }


def test_the_sirekap_ts_is_jakarta_time() -> None:
    data = _load(SAMPLES / "3101011001001.json")  # "ts": "2024-02-16 16:25:10" WIB
    form = form_from_sirekap("3101011001001", "ppwp", 1, data)
    assert form is not None
    assert form.signed_at.ToDatetime(UTC) == datetime(2024, 2, 16, 9, 25, 10, tzinfo=UTC)
    assert list(form.photo_sha256) == []  # the file has photo URLs, not the photos


def test_a_file_with_only_one_section_in_has_no_form() -> None:
    assert _load(SAMPLES / "3101011003006.json")["chart"] is None
    assert _load(SAMPLES / "3101011001008.json")["administrasi"] is None
    for tps in ("3101011003006", "3101011001008"):
        assert form_from_sirekap(tps, "ppwp", 1, _load(SAMPLES / f"{tps}.json")) is None
