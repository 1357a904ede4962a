"""Requests in, validated updates out: every bad field is named, and nothing of a bad batch is applied."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from services.aggregate.catalog import Catalog
from services.aggregate.errors import InvalidRequest
from suara.election.checks import MAX_PHOTOS
from suara.election.codes import TPS_LENGTH, is_area_code
from suara.election.form import ADMIN_KEYS
from suara.runtime.errors import FieldProblem
from suara.runtime.wire import AGGREGATE_MAX_BATCH
from suara.v1 import aggregate_pb2

SCALARS = ("suara_sah", "suara_tidak_sah", "suara_total", "dpt", "pengguna")
MAX_FORM_COUNT = 10**6  # far above any TPS (at most 600 voters): a typo, not a count
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Counts:
    votes: tuple[int, ...]  # aligned to the contest's choice order
    suara_sah: int
    suara_tidak_sah: int
    suara_total: int
    dpt: int
    pengguna: int

    def array_literal(self) -> str:
        return "{" + ",".join(map(str, self.votes)) + "}"


@dataclass(frozen=True)
class LeafUpdate:
    tps: str
    contest: str
    version: int
    quarantined: bool
    failed_checks: tuple[str, ...]
    counts: Counts
    # For the published TPS file: the form's administrasi as JSON ("" when the sender had none) and photos.
    administrasi: str = ""
    photos: tuple[str, ...] = field(default=())

    @property
    def key(self) -> tuple[str, str]:
        return (self.tps, self.contest)


@dataclass(frozen=True)
class AreaUpdate:
    area: str
    contest: str
    version: int
    counts: Counts
    tps_total: int
    tps_reported: int
    tps_quarantined: int

    @property
    def key(self) -> tuple[str, str]:
        return (self.area, self.contest)


def _counts(
    totals: aggregate_pb2.Totals, choices: list[str] | None, where: str, problems: list[FieldProblem]
) -> Counts:
    for name in SCALARS:
        if getattr(totals, name) < 0:
            problems.append(FieldProblem(f"{where}.{name}", f"must not be negative, got {getattr(totals, name)}"))
    votes: tuple[int, ...] = ()
    if choices is not None:
        known = set(choices)
        for choice, n in sorted(totals.votes.items()):
            if choice not in known:
                problems.append(FieldProblem(f"{where}.votes[{choice}]", f"unknown choice {choice!r} of this contest"))
            elif n < 0:
                problems.append(FieldProblem(f"{where}.votes[{choice}]", f"must not be negative, got {n}"))
        votes = tuple(totals.votes.get(c, 0) for c in choices)  # a choice not sent has no votes
    return Counts(votes, *(getattr(totals, name) for name in SCALARS))


def _batch_size(n: int) -> None:
    if n > AGGREGATE_MAX_BATCH:
        raise InvalidRequest(
            [FieldProblem("updates", f"at most {AGGREGATE_MAX_BATCH} updates per batch, got {n}; split it")]
        )


async def leaf_updates(request: aggregate_pb2.ApplyUpdatesRequest, catalog: Catalog) -> list[LeafUpdate]:
    _batch_size(len(request.updates))
    problems: list[FieldProblem] = []
    out = []
    for i, u in enumerate(request.updates):
        where = f"updates[{i}]"
        contest = catalog.contests.get(u.contest)
        if contest is None:
            problems.append(FieldProblem(f"{where}.contest", f"unknown contest {u.contest!r}"))
        if not await catalog.tps_known(u.tps):
            problems.append(FieldProblem(f"{where}.tps", f"unknown TPS {u.tps!r}: not in the registry"))
        elif contest is not None and not contest.held_at(u.tps):
            problems.append(
                FieldProblem(
                    f"{where}.tps", f"contest {u.contest!r} is not held at TPS {u.tps} (scope {contest.scope})"
                )
            )
        if u.version < 1:
            problems.append(FieldProblem(f"{where}.version", f"must be at least 1, got {u.version}"))
        choices = catalog.choice_ids(u.contest) if contest is not None else None
        counts = _counts(u.totals, choices, f"{where}.totals", problems)
        _check_form_extras(u, where, problems)
        administrasi = json.dumps(dict(sorted(u.administrasi.items()))) if u.administrasi else ""
        out.append(
            LeafUpdate(
                u.tps, u.contest, u.version, u.quarantined, tuple(u.failed_checks), counts,
                administrasi, tuple(u.photo_sha256),
            )
        )  # fmt: skip
    if problems:
        raise InvalidRequest(problems)
    return out


def _check_form_extras(u: aggregate_pb2.TpsUpdate, where: str, problems: list[FieldProblem]) -> None:
    for key, value in sorted(u.administrasi.items()):
        if key not in ADMIN_KEYS:
            problems.append(FieldProblem(f"{where}.administrasi[{key}]", "not a Sirekap administrasi field"))
        elif not 0 <= value <= MAX_FORM_COUNT:
            problems.append(FieldProblem(f"{where}.administrasi[{key}]", f"must be between 0 and {MAX_FORM_COUNT}"))
    if len(u.photo_sha256) > MAX_PHOTOS:
        problems.append(
            FieldProblem(f"{where}.photo_sha256", f"at most {MAX_PHOTOS} photos, got {len(u.photo_sha256)}")
        )
    for j, digest in enumerate(u.photo_sha256):
        if not _SHA256_HEX.fullmatch(digest):
            problems.append(FieldProblem(f"{where}.photo_sha256[{j}]", "must be 64 lowercase hex digits"))


def area_updates(request: aggregate_pb2.ApplyAreaUpdatesRequest, catalog: Catalog) -> list[AreaUpdate]:
    """Shape only; whether the area holds TPS of the contest is checked against the rows (see Rollup)."""
    _batch_size(len(request.updates))
    problems: list[FieldProblem] = []
    if not request.source:
        problems.append(FieldProblem("source", "empty: the sending instance's name"))
    out = []
    for i, u in enumerate(request.updates):
        where = f"updates[{i}]"
        contest = catalog.contests.get(u.contest)
        if contest is None:
            problems.append(FieldProblem(f"{where}.contest", f"unknown contest {u.contest!r}"))
        if not is_area_code(u.area) or len(u.area) == TPS_LENGTH:
            problems.append(
                FieldProblem(
                    f"{where}.area", f"must be a province, kabupaten/kota, kecamatan or desa code, got {u.area!r}"
                )
            )
        if u.version < 1:
            problems.append(FieldProblem(f"{where}.version", f"must be at least 1, got {u.version}"))
        for name in ("tps_total", "tps_reported", "tps_quarantined"):
            if getattr(u, name) < 0:
                problems.append(FieldProblem(f"{where}.{name}", f"must not be negative, got {getattr(u, name)}"))
        if u.tps_reported + u.tps_quarantined > u.tps_total:
            problems.append(FieldProblem(f"{where}.tps_reported", "tps_reported + tps_quarantined exceeds tps_total"))
        choices = catalog.choice_ids(u.contest) if contest is not None else None
        counts = _counts(u.totals, choices, f"{where}.totals", problems)
        out.append(AreaUpdate(u.area, u.contest, u.version, counts, u.tps_total, u.tps_reported, u.tps_quarantined))
    if problems:
        raise InvalidRequest(problems)
    return out
