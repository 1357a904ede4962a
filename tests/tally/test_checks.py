"""Every check of docs/domain.md through the API: each form fails exactly one check.

Malformed forms are refused with INVALID_ARGUMENT naming the field and nothing
is stored; inconsistent ones are stored QUARANTINED naming the check.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from services.tally.credentials import enroll_device
from suara.election.signing import DeviceKey
from suara.v1 import form_pb2, tally_pb2
from tests.support.factories import consistent_form, signed
from tests.support.rpc_errors import bad_fields
from tests.support.tally import Tally

Mutation = Callable[[form_pb2.CHasilForm], None]


def _unknown_choice(f: form_pb2.CHasilForm) -> None:
    f.votes["999999"] = 0


def _missing_choice(f: form_pb2.CHasilForm) -> None:
    first = sorted(f.votes)[0]
    f.suara_sah -= f.votes[first]
    f.suara_total -= f.votes[first]
    del f.votes[first]


def _negative(f: form_pb2.CHasilForm) -> None:
    f.suara_tidak_sah = -1


def _absurd(f: form_pb2.CHasilForm) -> None:
    f.pengguna_dptb.j = 10**9


def _missing_count(f: form_pb2.CHasilForm) -> None:
    f.ClearField("suara_total")


def _missing_sex_split(f: form_pb2.CHasilForm) -> None:
    f.pemilih_dpt.ClearField("p")


def _bad_version(f: form_pb2.CHasilForm) -> None:
    f.version = 0


def _unknown_contest(f: form_pb2.CHasilForm) -> None:
    f.contest = "pxyz"


def _first_choice(f: form_pb2.CHasilForm) -> str:
    return sorted(f.votes)[0]


MALFORMED: dict[str, tuple[Mutation, str]] = {
    "unknown choice": (_unknown_choice, "votes[999999]"),
    "negative count": (_negative, "suara_tidak_sah"),
    "absurd count": (_absurd, "pengguna_dptb.j"),
    "missing count": (_missing_count, "suara_total"),
    "missing j/l/p part": (_missing_sex_split, "pemilih_dpt.p"),
    "version below 1": (_bad_version, "version"),
    "unknown contest": (_unknown_contest, "contest"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_form_is_refused_naming_the_field(tally: Tally, case: str) -> None:
    mutate, field = MALFORMED[case]
    st = await tally.station()
    form = consistent_form(st.tps, "ppwp", tally.contests["ppwp"])
    mutate(form)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tally.stub.Submit(signed(st.key, form))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == [field]
    assert field in (err.value.details() or "")
    assert await tally.count("submission") == 0


async def test_missing_choice_is_named(tally: Tally) -> None:
    st = await tally.station()
    form = consistent_form(st.tps, "ppwp", tally.contests["ppwp"])
    missing = _first_choice(form)
    _missing_choice(form)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tally.stub.Submit(signed(st.key, form))
    assert bad_fields(err.value) == [f"votes[{missing}]"]


async def test_contest_not_held_at_the_tps_is_refused(tally: Tally) -> None:
    scoped = await tally.db.fetchrow("SELECT id, scope FROM registry.contest WHERE scope <> '' LIMIT 1")
    assert scoped is not None, "the test registry needs a contest held in one area only"
    st = await tally.station()  # never inside the scoped area (see tests/support/tally.py)
    assert not st.tps.startswith(scoped["scope"])
    form = consistent_form(st.tps, scoped["id"], tally.contests[scoped["id"]])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tally.stub.Submit(signed(st.key, form))
    assert bad_fields(err.value) == ["contest"]


async def test_unknown_tps_is_refused(tally: Tally) -> None:
    ghost = "9999999999999"  # a well-formed code that no desa has
    key = DeviceKey.generate(ghost)
    await enroll_device(tally.db, key.device_id, ghost, key.public_key, "test")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tally.stub.Submit(signed(key, consistent_form(ghost, "ppwp", tally.contests["ppwp"])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == ["tps"]


def _sum_ne_sah(f: form_pb2.CHasilForm) -> None:
    f.votes[_first_choice(f)] += 1


def _sah_tidak_sah_ne_total(f: form_pb2.CHasilForm) -> None:
    f.suara_tidak_sah += 1


def _total_gt_users(f: form_pb2.CHasilForm) -> None:
    extra = f.pengguna_total.j + 1 - f.suara_total
    f.suara_tidak_sah += extra
    f.suara_total += extra


def _users_ne_parts(f: form_pb2.CHasilForm) -> None:
    f.pengguna_total.j += 1
    f.pengguna_total.l += 1


def _j_ne_l_plus_p(f: form_pb2.CHasilForm) -> None:
    f.pemilih_dpt.l += 1


def _over_dpt(f: form_pb2.CHasilForm) -> None:
    f.pemilih_dpt.j, f.pemilih_dpt.l, f.pemilih_dpt.p = 10, 5, 5


INCONSISTENT: dict[str, Mutation] = {
    "sum_choices_ne_suara_sah": _sum_ne_sah,
    "sah_plus_tidak_sah_ne_suara_total": _sah_tidak_sah_ne_total,
    "suara_total_gt_pengguna_total": _total_gt_users,
    "pengguna_total_ne_dpt_dptb_dpk": _users_ne_parts,
    "j_ne_l_plus_p": _j_ne_l_plus_p,
    "count_gt_dpt_limit": _over_dpt,
}


@pytest.mark.parametrize("check", sorted(INCONSISTENT))
async def test_inconsistent_form_is_quarantined_naming_the_check(tally: Tally, check: str) -> None:
    st = await tally.station()
    form = consistent_form(st.tps, "ppwp", tally.contests["ppwp"])
    INCONSISTENT[check](form)
    response = await tally.stub.Submit(signed(st.key, form))
    assert response.outcome == tally_pb2.OUTCOME_QUARANTINED
    assert list(response.failed_checks) == [check]
    row = await tally.db.fetchrow("SELECT outcome, failed_checks FROM tally.submission")
    assert (row["outcome"], row["failed_checks"]) == ("QUARANTINED", [check])


async def test_dpr_contest_with_many_choices_is_accepted(tally: Tally) -> None:
    choices = tally.contests["pdpr"]
    assert len(choices) >= 50
    st = await tally.station()
    response = await tally.stub.Submit(signed(st.key, consistent_form(st.tps, "pdpr", choices)))
    assert response.outcome == tally_pb2.OUTCOME_ACCEPTED
