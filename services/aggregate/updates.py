"""Requests in, checked updates out: each update is checked on its own against the registry.

An update that breaks a rule is refused alone, with every bad field named (its UpdateRefusal),
and the rest of the batch applies: one poisoned update (a compromised writer, a corrupted row)
must not hold up every form behind it. Only a malformed batch as a whole is INVALID_ARGUMENT.
The bounds also keep every sum far inside bigint: 10,000 per count per TPS, 823k TPS.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from services.aggregate.catalog import Catalog
from services.aggregate.errors import InvalidRequest
from suara.election.checks import ALL_CHECKS, MAX_COUNT, MAX_PHOTOS, MAX_VERSION, ballot_ceiling
from suara.election.codes import TPS_LENGTH, is_area_code
from suara.election.form import ADMIN_KEYS
from suara.runtime.errors import FieldProblem
from suara.runtime.wire import AGGREGATE_MAX_BATCH
from suara.v1 import aggregate_pb2

SCALARS = ("suara_sah", "suara_tidak_sah", "suara_total", "dpt", "pengguna")
MAX_FORM_COUNT = 10**6  # far above any TPS (at most 600 voters): a typo, not a count
MAX_PROBLEMS = 20  # per refused update: its reason stays short however much is wrong
_KNOWN_CHECKS = frozenset(ALL_CHECKS)
AREA_MAX_TPS = 10**7  # more TPS than the country has (823k): what a federated subtree may claim at most
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


def _show(text: str) -> str:
    """A caller's string inside a field path or a reason, bounded: refusals are logged and stored."""
    return text if len(text) <= 40 and text.isprintable() else repr(text[:37]) + "…"


def _counts(
    totals: aggregate_pb2.Totals,
    choices: list[str] | None,
    where: str,
    problems: list[FieldProblem],
    most: int = MAX_COUNT,
) -> Counts:
    for name in SCALARS:
        value = getattr(totals, name)
        if not 0 <= value <= most:
            problems.append(FieldProblem(f"{where}.{name}", f"must be between 0 and {most}, got {value}"))
    votes: tuple[int, ...] = ()
    if choices is not None:
        known = set(choices)
        for choice, n in sorted(totals.votes.items()):
            if choice not in known:
                problems.append(FieldProblem(f"{where}.votes[{_show(choice)}]", "not a choice of this contest"))
            elif not 0 <= n <= most:
                problems.append(FieldProblem(f"{where}.votes[{choice}]", f"must be between 0 and {most}, got {n}"))
        votes = tuple(totals.votes.get(c, 0) for c in choices)  # a choice not sent has no votes
    return Counts(votes, *(getattr(totals, name) for name in SCALARS))


def _counted_form(counts: Counts, choices: list[str], ceiling: int, where: str, problems: list[FieldProblem]) -> None:
    """A counted (not quarantined) form's numbers: within what the TPS can hold, adding up as tally checked."""
    named = [(f"votes[{c}]", n) for c, n in zip(choices, counts.votes, strict=True)]
    named += [(name, getattr(counts, name)) for name in ("suara_sah", "suara_tidak_sah", "suara_total", "pengguna")]
    for name, n in named:
        if n > ceiling:
            problems.append(FieldProblem(f"{where}.{name}", f"{n} is more than this TPS can count ({ceiling})"))
    if sum(counts.votes) != counts.suara_sah:
        problems.append(
            FieldProblem(f"{where}.suara_sah", f"the votes add up to {sum(counts.votes)}, not {counts.suara_sah}")
        )
    if counts.suara_sah + counts.suara_tidak_sah != counts.suara_total:
        problems.append(FieldProblem(f"{where}.suara_total", "is not suara_sah + suara_tidak_sah"))
    if counts.suara_total > counts.pengguna:
        problems.append(FieldProblem(f"{where}.suara_total", "is more than pengguna (the voters who voted)"))


def _failed_checks(names: Sequence[str], where: str, problems: list[FieldProblem]) -> None:
    if len(names) > len(_KNOWN_CHECKS):
        problems.append(FieldProblem(where, f"at most {len(_KNOWN_CHECKS)} checks (each once), got {len(names)}"))
        return
    seen: set[str] = set()
    for j, name in enumerate(names):
        if name not in _KNOWN_CHECKS:
            problems.append(FieldProblem(f"{where}[{j}]", f"{_show(name)} is not a check of docs/domain.md"))
        elif name in seen:
            problems.append(FieldProblem(f"{where}[{j}]", f"{name} is listed twice"))
        seen.add(name)


def _batch_size(n: int) -> None:
    if n > AGGREGATE_MAX_BATCH:
        raise InvalidRequest(
            [FieldProblem("updates", f"at most {AGGREGATE_MAX_BATCH} updates per batch, got {n}; split it")]
        )


U = TypeVar("U", LeafUpdate, AreaUpdate)


@dataclass
class Checked(Generic[U]):
    """A batch after its checks: what may be applied (with its index in the request), what is refused."""

    passed: list[tuple[int, U]] = field(default_factory=list)
    refused: dict[int, list[FieldProblem]] = field(default_factory=dict)

    def add(self, index: int, update: U, problems: list[FieldProblem]) -> None:
        if problems:
            self.refused[index] = problems
        else:
            self.passed.append((index, update))

    @property
    def updates(self) -> list[U]:
        return [u for _, u in self.passed]


def reply(
    checked: Checked[U],
    outcomes: Sequence[aggregate_pb2.UpdateOutcome.ValueType],
    later: Mapping[int, list[FieldProblem]],
) -> tuple[list[aggregate_pb2.UpdateOutcome.ValueType], list[aggregate_pb2.UpdateRefusal]]:
    """Every update's outcome in request order, and the refusals: the checks' and the applier's own
    (`later`, by position among the passed updates, fields relative to the update)."""
    refused = dict(checked.refused)
    for position, problems in later.items():
        index = checked.passed[position][0]
        refused[index] = [FieldProblem(f"updates[{index}].{p.field}", p.description) for p in problems]
    by_index = {index: outcome for (index, _), outcome in zip(checked.passed, outcomes, strict=True)}
    n = len(checked.passed) + len(checked.refused)
    out = [aggregate_pb2.UPDATE_OUTCOME_REFUSED if i in refused else by_index[i] for i in range(n)]
    return out, [refusal(i, refused[i]) for i in sorted(refused)]


def refusal(index: int, problems: list[FieldProblem]) -> aggregate_pb2.UpdateRefusal:
    shown = problems[:MAX_PROBLEMS]
    reason = "; ".join(f"{p.field}: {p.description}" for p in shown)
    if len(problems) > len(shown):
        reason += f"; and {len(problems) - len(shown)} more"
    return aggregate_pb2.UpdateRefusal(index=index, fields=[p.field for p in shown], reason=reason)


async def leaf_updates(request: aggregate_pb2.ApplyUpdatesRequest, catalog: Catalog) -> Checked[LeafUpdate]:
    _batch_size(len(request.updates))
    checked: Checked[LeafUpdate] = Checked()
    for i, u in enumerate(request.updates):
        where = f"updates[{i}]"
        problems: list[FieldProblem] = []
        contest = catalog.contests.get(u.contest)
        if contest is None:
            problems.append(FieldProblem(f"{where}.contest", f"unknown contest {_show(u.contest)}"))
        dpt = await catalog.tps_dpt(u.tps)
        if dpt is None:
            problems.append(FieldProblem(f"{where}.tps", f"unknown TPS {_show(u.tps)}: not in the registry"))
        elif contest is not None and not contest.held_at(u.tps):
            problems.append(
                FieldProblem(
                    f"{where}.tps", f"contest {u.contest!r} is not held at TPS {u.tps} (scope {contest.scope})"
                )
            )
        if not 1 <= u.version <= MAX_VERSION:
            problems.append(FieldProblem(f"{where}.version", f"must be between 1 and {MAX_VERSION}, got {u.version}"))
        choices = catalog.choice_ids(u.contest) if contest is not None else None
        counts = _counts(u.totals, choices, f"{where}.totals", problems)
        if not u.quarantined and not problems and contest is not None and choices is not None and dpt is not None:
            ceiling = ballot_ceiling(dpt, contest.max_voters_per_tps)
            _counted_form(counts, choices, ceiling, f"{where}.totals", problems)
        _failed_checks(u.failed_checks, f"{where}.failed_checks", problems)
        _check_form_extras(u, where, problems)
        administrasi = json.dumps(dict(sorted(u.administrasi.items()))) if u.administrasi else ""
        update = LeafUpdate(
            u.tps, u.contest, u.version, u.quarantined, tuple(u.failed_checks), counts,
            administrasi, tuple(u.photo_sha256),
        )  # fmt: skip
        checked.add(i, update, problems)
    return checked


def _check_form_extras(u: aggregate_pb2.TpsUpdate, where: str, problems: list[FieldProblem]) -> None:
    for key, value in sorted(u.administrasi.items()):
        if key not in ADMIN_KEYS:
            problems.append(FieldProblem(f"{where}.administrasi[{_show(key)}]", "not a Sirekap administrasi field"))
        elif not 0 <= value <= MAX_FORM_COUNT:
            problems.append(FieldProblem(f"{where}.administrasi[{key}]", f"must be between 0 and {MAX_FORM_COUNT}"))
    if len(u.photo_sha256) > MAX_PHOTOS:
        problems.append(
            FieldProblem(f"{where}.photo_sha256", f"at most {MAX_PHOTOS} photos, got {len(u.photo_sha256)}")
        )
    for j, digest in enumerate(u.photo_sha256[:MAX_PHOTOS]):
        if not _SHA256_HEX.fullmatch(digest):
            problems.append(FieldProblem(f"{where}.photo_sha256[{j}]", "must be 64 lowercase hex digits"))


def area_updates(request: aggregate_pb2.ApplyAreaUpdatesRequest, catalog: Catalog) -> Checked[AreaUpdate]:
    """Each update's shape and bounds; whether the area holds TPS of the contest here, and as many,
    is checked against the rows (see Rollup.apply_feed)."""
    _batch_size(len(request.updates))
    if not request.source:
        raise InvalidRequest([FieldProblem("source", "empty: the sending instance's name")])
    checked: Checked[AreaUpdate] = Checked()
    for i, u in enumerate(request.updates):
        where = f"updates[{i}]"
        problems: list[FieldProblem] = []
        contest = catalog.contests.get(u.contest)
        if contest is None:
            problems.append(FieldProblem(f"{where}.contest", f"unknown contest {_show(u.contest)}"))
        if not is_area_code(u.area) or len(u.area) == TPS_LENGTH:
            problems.append(
                FieldProblem(
                    f"{where}.area",
                    f"must be a province, kabupaten/kota, kecamatan or desa code, got {_show(u.area)}",
                )
            )
        if u.version < 1:
            problems.append(FieldProblem(f"{where}.version", f"must be at least 1, got {u.version}"))
        for name in ("tps_total", "tps_reported", "tps_quarantined"):
            if not 0 <= getattr(u, name) <= AREA_MAX_TPS:
                problems.append(
                    FieldProblem(f"{where}.{name}", f"must be between 0 and {AREA_MAX_TPS}, got {getattr(u, name)}")
                )
        if u.tps_reported + u.tps_quarantined > u.tps_total:
            problems.append(FieldProblem(f"{where}.tps_reported", "tps_reported + tps_quarantined exceeds tps_total"))
        choices = catalog.choice_ids(u.contest) if contest is not None else None
        # A subtree counts its reported TPS only: each adds at most a form's largest count.
        most = max(0, min(u.tps_reported, AREA_MAX_TPS)) * MAX_COUNT
        counts = _counts(u.totals, choices, f"{where}.totals", problems, most)
        update = AreaUpdate(u.area, u.contest, u.version, counts, u.tps_total, u.tps_reported, u.tps_quarantined)
        checked.add(i, update, problems)
    return checked
