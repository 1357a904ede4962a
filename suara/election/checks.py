"""The checks every C.Hasil form gets (docs/domain.md).

*Malformed* forms cannot be read as a result at all: an unknown TPS or choice,
a contest not held there, a negative, absurd or missing number. They are
rejected and nothing is stored; `find_malformed` names every bad field at once,
so the officer fixes them all in one round trip, not one per submission.

*Inconsistent* forms are readable but their numbers do not add up. They are
stored but quarantined, not rejected: the form is the KPPS officers' signed
document, the record of what they counted, and throwing it away would hide
that the TPS reported (and push officers to bend numbers until the server
takes them). Quarantined, it is kept for audit, counted as flagged and shown
on the site, but kept out of the totals, so a misread number (Sirekap 2024
turned "0" into hundreds) never reaches them, until a corrected, higher
version arrives. `find_inconsistencies` names each failed rule with a stable
check name, the vocabulary of the quarantine flags and the published files.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from suara.election.codes import TPS_LENGTH, is_tps_code
from suara.election.contest import Contest
from suara.election.form import ADMIN_TRIPLES, SCALARS, SEXES, Violation
from suara.v1 import form_pb2

__all__ = [
    "ALL_CHECKS",
    "J_NE_L_PLUS_P",
    "MAX_COUNT",
    "MAX_PHOTOS",
    "MAX_VERSION",
    "OVER_DPT_LIMIT",
    "SAH_TIDAK_SAH_NE_TOTAL",
    "SUM_CHOICES_NE_SAH",
    "TOTAL_GT_USERS",
    "USERS_NE_PARTS",
    "Violation",
    "ballot_ceiling",
    "find_inconsistencies",
    "find_malformed",
]

MAX_COUNT = 10_000  # absurd for any one count: no TPS has that many voters
# Versions of one form (per TPS and contest). A form is corrected a few times at most; a cap far
# above that keeps a version from being pushed to the integer limit, where no correction could follow.
MAX_VERSION = 100
MAX_PHOTOS = 3
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

SUM_CHOICES_NE_SAH = "sum_choices_ne_suara_sah"
SAH_TIDAK_SAH_NE_TOTAL = "sah_plus_tidak_sah_ne_suara_total"
TOTAL_GT_USERS = "suara_total_gt_pengguna_total"
USERS_NE_PARTS = "pengguna_total_ne_dpt_dptb_dpk"
J_NE_L_PLUS_P = "j_ne_l_plus_p"
OVER_DPT_LIMIT = "count_gt_dpt_limit"
ALL_CHECKS = (
    SUM_CHOICES_NE_SAH,
    SAH_TIDAK_SAH_NE_TOTAL,
    TOTAL_GT_USERS,
    USERS_NE_PARTS,
    J_NE_L_PLUS_P,
    OVER_DPT_LIMIT,
)


def find_malformed(form: form_pb2.CHasilForm, *, contest: Contest | None, tps_known: bool) -> list[Violation]:
    """Every reason the form cannot be stored, by proto field path; [] if none.

    `contest` is the contest `form.contest` names, None when there is no such
    contest; `tps_known` says whether the registry has `form.tps`.
    """
    if contest is not None and contest.id != form.contest:
        raise ValueError(f"looked up contest {contest.id!r} for a form of {form.contest!r}")
    return [
        *_place(form, contest, tps_known),
        *_version(form),
        *_votes(form, contest),
        *_administrasi(form),
        *_photos(form),
    ]


def _place(form: form_pb2.CHasilForm, contest: Contest | None, tps_known: bool) -> Iterator[Violation]:
    if not is_tps_code(form.tps):
        yield Violation(
            "tps", f"must be a {TPS_LENGTH}-digit TPS code (desa code + 3-digit number), got {_show(form.tps)}"
        )
    elif not tps_known:
        yield Violation("tps", f"unknown TPS {form.tps}; expected a TPS of the registry")
    if contest is None:
        yield Violation("contest", f"unknown contest {_show(form.contest)}; expected a contest of this election")
    elif is_tps_code(form.tps) and not contest.held_at(form.tps):
        yield Violation(
            "contest",
            f"{contest.id} is not held at TPS {form.tps}; expected a TPS under area {contest.scope}",
        )


def _version(form: form_pb2.CHasilForm) -> Iterator[Violation]:
    if not 1 <= form.version <= MAX_VERSION:
        yield Violation(
            "version",
            f"must be between 1 and {MAX_VERSION} (the cap on versions of one form), got {form.version}",
        )


def _votes(form: form_pb2.CHasilForm, contest: Contest | None) -> Iterator[Violation]:
    expected = contest.choice_ids if contest is not None else frozenset()
    for choice in sorted(expected | set(form.votes)):
        field = f"votes[{choice}]"
        if contest is not None and choice not in expected:
            known = ", ".join(sorted(expected))
            yield Violation(field, f"{_show(choice)} is not a choice of {contest.id}; expected {known}")
        elif choice not in form.votes:
            yield Violation(field, "missing; every choice needs a count, 0 if it got no votes")
        else:
            yield from _count(field, form.votes[choice])


def _administrasi(form: form_pb2.CHasilForm) -> Iterator[Violation]:
    for name in SCALARS:
        if form.HasField(name):
            yield from _count(name, getattr(form, name))
        else:
            yield Violation(name, "missing; expected a count >= 0")
    for triple in ADMIN_TRIPLES:
        if not form.HasField(triple):
            yield Violation(triple, "missing; expected its j, l and p counts")
            continue
        counts: form_pb2.VoterCount = getattr(form, triple)
        for sex in SEXES:
            if counts.HasField(sex):
                yield from _count(f"{triple}.{sex}", getattr(counts, sex))
            else:
                yield Violation(f"{triple}.{sex}", "missing; expected a count >= 0")


def _count(field: str, value: int) -> Iterator[Violation]:
    if value < 0:
        yield Violation(field, f"must be >= 0, got {value}")
    elif value > MAX_COUNT:
        yield Violation(field, f"must be <= {MAX_COUNT} (no TPS has that many voters), got {value}")


def _photos(form: form_pb2.CHasilForm) -> Iterator[Violation]:
    photos = form.photo_sha256
    if len(photos) > MAX_PHOTOS:
        yield Violation("photo_sha256", f"must list at most {MAX_PHOTOS} photos, got {len(photos)}")
    first_at: dict[str, int] = {}
    for i, digest in enumerate(photos):
        if not _SHA256_HEX.fullmatch(digest):
            yield Violation(f"photo_sha256[{i}]", f"must be a SHA-256 as 64 lowercase hex digits, got {_show(digest)}")
        elif digest in first_at:
            yield Violation(
                f"photo_sha256[{i}]", f"duplicate of photo_sha256[{first_at[digest]}]; list each photo once"
            )
        else:
            first_at[digest] = i


def _show(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37]) + "..."


def find_inconsistencies(form: form_pb2.CHasilForm) -> list[str]:
    """The names of the consistency rules a well-formed form breaks, in ALL_CHECKS order."""
    dpt, users = form.pemilih_dpt, form.pengguna_total
    parts = (form.pengguna_dpt, form.pengguna_dptb, form.pengguna_non_dpt)
    sah, tidak_sah, total = form.suara_sah, form.suara_tidak_sah, form.suara_total
    votes = list(form.votes.values())
    # DPT × 1.02 + DPTb + DPK, scaled by 100 to stay in exact integers.
    limit_x100 = 102 * dpt.j + 100 * (form.pengguna_dptb.j + form.pengguna_non_dpt.j)
    broken = {
        SUM_CHOICES_NE_SAH: sum(votes) != sah,
        SAH_TIDAK_SAH_NE_TOTAL: sah + tidak_sah != total,
        TOTAL_GT_USERS: total > users.j,
        USERS_NE_PARTS: any(u != a + b + c for u, a, b, c in zip(*map(_sexes, (users, *parts)), strict=True)),
        J_NE_L_PLUS_P: any(c.j != c.l + c.p for c in (dpt, *parts, users)),
        OVER_DPT_LIMIT: any(100 * n > limit_x100 for n in (*votes, sah, tidak_sah, total, users.j, parts[0].j)),
    }
    return [name for name in ALL_CHECKS if broken[name]]


def ballot_ceiling(registered_dpt: int, max_voters_per_tps: int) -> int:
    """The most ballots (or voters) a counted form of a TPS can show, from the registry alone.

    count_gt_dpt_limit's allowance, DPT × 1.02 + DPTb + DPK, with the registry's DPT (or the
    contest's max_voters_per_tps, if more: forms are not held to the registry's DPT, which may
    be out of date) and room for up to max_voters_per_tps DPTb and DPK voters. aggregate refuses
    an update above it: a form's numbers cannot get there, only a writer's.
    """
    registered = max(registered_dpt, max_voters_per_tps)
    return (102 * registered) // 100 + max_voters_per_tps


def _sexes(counts: form_pb2.VoterCount) -> tuple[int, int, int]:
    return counts.j, counts.l, counts.p
