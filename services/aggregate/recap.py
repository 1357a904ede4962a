"""Rekapitulasi berjenjang: officials' signed recap totals, and their reconciliation with the digital count.

A recap is a signed document like a C.Hasil form: the official's key must be
enrolled for exactly that area, the payload bytes are what is signed and
stored, and (area, contest, version) is unique by constraint — a resend is
DUPLICATE, a different payload for a stored version is refused, an older
version is kept as history. Reconciliation compares the current recap with
the area's rolled-up digital totals field by field.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import structlog
from google.protobuf.message import DecodeError

from services.aggregate.catalog import Catalog
from services.aggregate.errors import InvalidRequest
from services.aggregate.queries import QUERIES
from suara.election import signing
from suara.election.checks import MAX_VERSION
from suara.election.codes import parent_of
from suara.election.payloads import describe_unknown, other_election, unknown_fields
from suara.runtime.database import Database
from suara.runtime.errors import AlreadyExists, FieldProblem, NotFound, PermissionDenied, Unauthenticated
from suara.runtime.pagination import Pager
from suara.v1 import aggregate_pb2

log = structlog.stdlib.get_logger("suara.aggregate.recap")

SCALARS = ("suara_sah", "suara_tidak_sah", "suara_total", "dpt", "pengguna")
MAX_AREA_COUNT = 10**9  # more than the whole electorate: a typo, not a count
MISMATCHES = Pager("ListMismatches", default_size=100, max_size=1000, key_types=(str,))


async def submit_recap(
    db: Database, catalog: Catalog, request: aggregate_pb2.SubmitRecapRequest
) -> aggregate_pb2.SubmitRecapResponse:
    signed = request.recap
    problems = []
    if not signed.payload:
        problems.append(FieldProblem("recap.payload", "empty: the serialized RecapForm that was signed"))
    if len(signed.signature) != signing.SIGNATURE_BYTES:
        problems.append(
            FieldProblem("recap.signature", f"must be a 64-byte Ed25519 signature, got {len(signed.signature)}")
        )
    if not signed.official_id:
        problems.append(FieldProblem("recap.official_id", "empty: the id of the official's enrolled key"))
    if problems:
        raise InvalidRequest(problems)
    official = await db.fetchrow(QUERIES.official, signed.official_id)
    if official is None:
        raise Unauthenticated(f"unknown official {signed.official_id!r}: enroll with `suara official enroll`")
    if not signing.verify(bytes(official["public_key"]), signed.payload, signed.signature):
        raise Unauthenticated(
            f"the signature does not verify with official {signed.official_id}'s key: altered, or another key"
        )
    if official["revoked"]:  # signed with a revoked key: refused, and someone must go and look
        log.error("revoked_official", official_id=signed.official_id, area=official["area"], role=official["role"])
        raise PermissionDenied(
            f"official {signed.official_id} ({official['role']} of {official['area']}) is revoked: its recaps are "
            "refused. A successor signs with a key of their own (`suara official enroll`)"
        )
    try:
        form = aggregate_pb2.RecapForm.FromString(signed.payload)
    except DecodeError:
        raise InvalidRequest([FieldProblem("recap.payload", "is not a serialized suara.v1.RecapForm")]) from None
    unknown = unknown_fields(form)
    if unknown:
        raise InvalidRequest([FieldProblem("recap.payload", describe_unknown(unknown, "suara.v1.RecapForm"))])
    election = await catalog.election(form.election_id)
    if form.election_id != election:
        raise other_election("recap", form.election_id, election)
    if form.area != official["area"]:
        raise PermissionDenied(
            f"official {signed.official_id} ({official['role']}) recaps area {official['area']}, not {form.area!r}"
        )
    choices = await _validate(db, catalog, form)
    digest = hashlib.sha256(signed.payload).digest()
    votes = [form.totals.votes[c] for c in choices]
    async with db.acquire() as conn, conn.transaction():
        inserted = await conn.fetchval(
            QUERIES.insert_recap, uuid.uuid4(), form.area, form.contest, form.version, signed.payload, digest,
            signed.signature, signed.official_id, votes, *(getattr(form.totals, s) for s in SCALARS),
        )  # fmt: skip
        current = int(await conn.fetchval(QUERIES.recap_current_version, form.area, form.contest))
        if inserted is not None:
            accepted = form.version >= current
            outcome = aggregate_pb2.RECAP_OUTCOME_ACCEPTED if accepted else aggregate_pb2.RECAP_OUTCOME_SUPERSEDED
            if accepted:
                await _log_recap_change(conn, form.contest, form.area)
            return aggregate_pb2.SubmitRecapResponse(outcome=outcome, recap_id=str(inserted), current_version=current)
        existing = await conn.fetchrow(QUERIES.recap_by_key, form.area, form.contest, form.version)
    if bytes(existing["payload_sha256"]) != digest:
        raise AlreadyExists(
            f"recap version {form.version} of {form.area} {form.contest} is already stored with a different payload "
            f"(recap {existing['id']}); the original is kept. Sign a correction with a version above {current}"
        )
    return aggregate_pb2.SubmitRecapResponse(
        outcome=aggregate_pb2.RECAP_OUTCOME_DUPLICATE, recap_id=str(existing["id"]), current_version=current
    )


async def _log_recap_change(conn: asyncpg.Connection, contest: str, area: str) -> None:
    """A new current recap changes what publish shows for the area and in its parent's list: log both.

    Taking the head lock orders this with the appliers, so `Changes(since)` never skips it.
    """
    head = await conn.fetchrow(QUERIES.lock_head)
    sequence = head["sequence"] + 1
    parent = parent_of(area) or ""  # a province's parent is the nation
    await conn.execute(QUERIES.log_change, sequence, contest, [area, parent])
    await conn.execute(QUERIES.set_head, sequence, None)


async def _validate(db: Database, catalog: Catalog, form: aggregate_pb2.RecapForm) -> list[str]:
    problems = []
    contest = catalog.contests.get(form.contest)
    if contest is None:
        raise InvalidRequest([FieldProblem("contest", f"unknown contest {form.contest!r}")])
    if await db.fetchrow(QUERIES.area_digital, form.contest, form.area) is None:
        problems.append(FieldProblem("area", f"{form.contest} is not held in area {form.area!r}"))
    if not 1 <= form.version <= MAX_VERSION:
        problems.append(
            FieldProblem("version", f"must be between 1 and {MAX_VERSION} (the cap on versions), got {form.version}")
        )
    choices = catalog.choice_ids(form.contest)
    for choice in sorted(set(choices) | set(form.totals.votes)):
        field = f"totals.votes[{choice}]"
        if choice not in choices:
            problems.append(FieldProblem(field, f"not a choice of {form.contest}"))
        elif choice not in form.totals.votes:
            problems.append(FieldProblem(field, "missing; every choice needs a count, 0 if none"))
        elif not 0 <= form.totals.votes[choice] <= MAX_AREA_COUNT:
            problems.append(FieldProblem(field, f"must be between 0 and {MAX_AREA_COUNT}"))
    for name in SCALARS:
        if not 0 <= getattr(form.totals, name) <= MAX_AREA_COUNT:
            problems.append(FieldProblem(f"totals.{name}", f"must be between 0 and {MAX_AREA_COUNT}"))
    if problems:
        raise InvalidRequest(problems)
    return choices


def _totals(votes: Sequence[int], row: Any, prefix: str, choices: Sequence[str]) -> aggregate_pb2.Totals:
    return aggregate_pb2.Totals(votes=dict(zip(choices, votes, strict=True)), **{s: row[prefix + s] for s in SCALARS})


def _compare(
    area: str, contest: str, recap: aggregate_pb2.Totals | None, digital: aggregate_pb2.Totals, counts: Any
) -> aggregate_pb2.Reconciliation:
    result = aggregate_pb2.Reconciliation(
        area=area,
        contest=contest,
        digital=digital,
        tps_total=counts["tps_total"],
        tps_reported=counts["tps_reported"],
        tps_quarantined=counts["tps_quarantined"],
    )
    if recap is None:
        result.status = aggregate_pb2.RECONCILIATION_STATUS_NO_RECAP
        return result
    result.recap.CopyFrom(recap)
    pairs = [(f"votes[{c}]", recap.votes[c], digital.votes.get(c, 0)) for c in recap.votes]
    pairs += [(s, getattr(recap, s), getattr(digital, s)) for s in SCALARS]
    for field, r, d in sorted(pairs):
        if r != d:
            result.differences.add(field=field, recap=r, digital=d, difference=r - d)
    if counts["tps_reported"] < counts["tps_total"]:
        result.status = aggregate_pb2.RECONCILIATION_STATUS_INCOMPLETE
    elif result.differences:
        result.status = aggregate_pb2.RECONCILIATION_STATUS_MISMATCH
    else:
        result.status = aggregate_pb2.RECONCILIATION_STATUS_MATCH
    return result


def reconcile(
    area: str, contest: str, recap_row: Any, digital_row: Any, choices: Sequence[str]
) -> aggregate_pb2.Reconciliation:
    """An area's current recap (a row, or None) against its digital row, without history."""
    digital = _totals(digital_row["votes"] or [0] * len(choices), digital_row, "", choices)
    recap = None if recap_row is None else _totals(recap_row["votes"], recap_row, "", choices)
    result = _compare(area, contest, recap, digital, digital_row)
    if recap_row is not None:
        result.recap_version = recap_row["version"]
    return result


async def get_reconciliation(db: Database, catalog: Catalog, area: str, contest: str) -> aggregate_pb2.Reconciliation:
    if contest not in catalog.contests:
        raise InvalidRequest([FieldProblem("contest", f"unknown contest {contest!r}")])
    choices = catalog.choice_ids(contest)
    async with db.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        digital_row = await conn.fetchrow(QUERIES.area_digital, contest, area)
        history = await conn.fetch(QUERIES.recap_history, area, contest)
    if digital_row is None:
        raise NotFound(f"no area {area!r} where {contest} is held")
    result = reconcile(area, contest, history[-1] if history else None, digital_row, choices)
    for row in history:
        version = result.history.add(
            version=row["version"],
            official_id=row["official_id"],
            totals=_totals(row["votes"], row, "", choices),
            recap_id=str(row["id"]),
        )
        version.received_at.FromDatetime(row["received_at"])
    return result


async def list_mismatches(
    db: Database, catalog: Catalog, request: aggregate_pb2.ListMismatchesRequest
) -> aggregate_pb2.ListMismatchesResponse:
    """A page of the recapped areas whose reconciliation is MISMATCH (or, when asked, INCOMPLETE with
    differences), by area code: the query picks them, `_compare` says how they differ."""
    contest = request.contest
    if contest not in catalog.contests:
        raise InvalidRequest([FieldProblem("contest", f"unknown contest {contest!r}")])
    filters = (request.area, contest, request.include_incomplete)
    size = MISMATCHES.size(request.page_size)
    (after,) = MISMATCHES.after(request.page_token, filters) or ("",)
    choices = catalog.choice_ids(contest)
    rows = await db.fetch(QUERIES.mismatches_under, contest, request.area, after, request.include_incomplete, size + 1)
    page, token = MISMATCHES.page(rows, size, lambda r: (r["area"],), filters)
    response = aggregate_pb2.ListMismatchesResponse(next_page_token=token)
    for row in page:
        recap = _totals(row["votes"], row, "", choices)
        digital = _totals(row["d_votes"], row, "d_", choices)
        item = _compare(row["area"], contest, recap, digital, row)
        item.recap_version = row["version"]
        response.items.append(item)
    return response
