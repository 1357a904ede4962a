"""The form's JSON shapes: the human dict, Sirekap's administrasi, the aggregate counts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from suara.election.checks import Violation, find_malformed
from suara.election.form import (
    ADMIN_TRIPLES,
    FormDictError,
    administrasi_of,
    counts_of,
    form_from_dict,
    form_to_dict,
)
from suara.v1 import form_pb2
from tests.election.factories import PPWP, base_dict


def test_the_base_dict_round_trips_exactly() -> None:
    data = base_dict()
    form = form_from_dict(data)
    assert form_to_dict(form) == data
    assert form_from_dict(json.loads(json.dumps(form_to_dict(form)))) == form


def test_administrasi_and_counts_use_sirekap_keys() -> None:
    data = base_dict()
    form = form_from_dict(data)
    assert ADMIN_TRIPLES == (
        "pemilih_dpt",
        "pengguna_dpt",
        "pengguna_dptb",
        "pengguna_non_dpt",
        "pengguna_total",
    )
    assert administrasi_of(form) == data["administrasi"]
    assert counts_of(form) == {"votes": data["votes"], **data["administrasi"]}
    json.dumps(counts_of(form))  # JSON-ready as it is


def test_administrasi_of_refuses_a_form_with_a_missing_count() -> None:
    data = base_dict()
    del data["administrasi"]["pengguna_dptb_p"]
    with pytest.raises(ValueError, match="pengguna_dptb_p"):
        administrasi_of(form_from_dict(data))


def test_missing_and_null_counts_become_absent_fields() -> None:
    data = base_dict()
    del data["administrasi"]["suara_sah"]
    data["administrasi"]["suara_total"] = None
    data["administrasi"]["pemilih_dpt_l"] = None
    for sex in "jlp":
        del data["administrasi"][f"pengguna_dptb_{sex}"]
    data["votes"]["100026"] = None
    form = form_from_dict(data)
    assert not form.HasField("suara_sah")
    assert not form.HasField("suara_total")
    assert not form.pemilih_dpt.HasField("l")
    assert not form.HasField("pengguna_dptb")
    assert "100026" not in form.votes
    fields = [v.field for v in find_malformed(form, contest=PPWP, tps_known=True)]
    assert fields == ["votes[100026]", "suara_sah", "suara_total", "pemilih_dpt.l", "pengguna_dptb"]


def test_every_bad_key_is_named_at_once() -> None:
    data: dict[str, Any] = base_dict()
    del data["tps"]
    data["contest"] = 7
    data["version"] = "1"
    data["signed_at_unix_ms"] = 2**63
    data["colour"] = "red"
    data["votes"]["100025"] = 1.5
    data["votes"]["100026"] = True
    data["administrasi"]["suara_sha"] = 1
    data["administrasi"]["suara_total"] = "157"
    data["photo_sha256"] = ["ab" * 32, 5]
    with pytest.raises(FormDictError) as caught:
        form_from_dict(data)
    assert caught.value.problems == [
        Violation(
            "colour",
            "unknown key; expected only tps, contest, version, votes, administrasi, photo_sha256, "
            "signed_at_unix_ms, election_id",
        ),
        Violation("tps", "missing"),
        Violation("contest", "must be a string, got int 7"),
        Violation("version", "must be an integer, got str '1'"),
        Violation("signed_at_unix_ms", "must fit in a signed 64-bit integer, got 9223372036854775808"),
        Violation("votes[100025]", "must be an integer, got float 1.5"),
        Violation("votes[100026]", "must be an integer, got bool True"),
        Violation("administrasi.suara_total", "must be an integer, got str '157'"),
        Violation(
            "administrasi.suara_sha",
            "unknown key; expected only suara_sah, suara_tidak_sah, suara_total, "
            + ", ".join(f"{t}_{s}" for t in ADMIN_TRIPLES for s in "jlp"),
        ),
        Violation("photo_sha256[1]", "must be a string, got int 5"),
    ]
    assert "tps: missing" in str(caught.value)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([], [Violation("form", "must be a JSON object, got list")]),
        (
            {"tps": "3101011001001", "contest": "ppwp", "version": 1, "votes": [], "administrasi": None},
            [
                Violation("votes", "must be an object of choice id -> votes, got list []"),
                Violation("administrasi", "must be an object of counts, got null"),
            ],
        ),
        (
            {
                "tps": "3101011001001",
                "contest": "ppwp",
                "version": 1,
                "votes": {},
                "administrasi": {},
                "photo_sha256": "ab",
            },
            [Violation("photo_sha256", "must be a list of SHA-256 hex strings, got str 'ab'")],
        ),
        ({}, [Violation(k, "missing") for k in ("tps", "contest", "version", "votes", "administrasi")]),
    ],
)
def test_wrong_shapes(data: object, expected: list[Violation]) -> None:
    with pytest.raises(FormDictError) as caught:
        form_from_dict(data)
    assert caught.value.problems == expected


def test_optional_keys_default() -> None:
    data = base_dict()
    del data["photo_sha256"], data["signed_at_unix_ms"]
    form = form_from_dict(data)
    assert list(form.photo_sha256) == []
    assert not form.HasField("signed_at")


@pytest.mark.parametrize(
    ("unix_ms", "expected"),
    [
        (1_707_900_000_123, datetime(2024, 2, 14, 8, 40, 0, 123000, tzinfo=UTC)),
        (-86_400_000, datetime(1969, 12, 31, tzinfo=UTC)),
        (253_402_300_799_999, datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)),
    ],
)
def test_the_signing_time_is_unix_milliseconds(unix_ms: int, expected: datetime) -> None:
    data = base_dict()
    data["signed_at_unix_ms"] = unix_ms
    form = form_from_dict(data)
    assert form.signed_at.ToDatetime(UTC) == expected
    assert form_to_dict(form)["signed_at_unix_ms"] == unix_ms


@pytest.mark.parametrize("unix_ms", [253_402_300_800_000, -62_135_596_800_001])
def test_a_signing_time_outside_years_1_to_9999_is_named(unix_ms: int) -> None:
    data = base_dict()
    data["signed_at_unix_ms"] = unix_ms
    with pytest.raises(FormDictError) as caught:
        form_from_dict(data)
    assert caught.value.problems == [
        Violation("signed_at_unix_ms", f"must be a time in the years 1 to 9999 (Unix milliseconds), got {unix_ms}")
    ]


def test_to_dict_leaves_absent_counts_out() -> None:
    form = form_pb2.CHasilForm(tps="3101011001001", contest="ppwp", version=2, suara_sah=0)
    form.pengguna_total.l = 4
    assert form_to_dict(form) == {
        "tps": "3101011001001",
        "contest": "ppwp",
        "version": 2,
        "votes": {},
        "administrasi": {"suara_sah": 0, "pengguna_total_l": 4},
        "photo_sha256": [],
        "signed_at_unix_ms": 0,
    }
