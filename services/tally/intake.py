"""From a SubmitRequest to a form ready to store, or the precise reason it is refused.

Order matters: the signature is checked before the payload is trusted for
anything, and the server parses the signed bytes themselves, never a
re-encoding. Inconsistent forms are not refused: they are the officer's
signed document and are stored quarantined.
"""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError

from services.tally.credentials import DeviceKeys, DeviceRecord
from services.tally.errors import InvalidForm
from services.tally.photos import Photo, check_photos
from suara.election import signing
from suara.election.checks import find_inconsistencies, find_malformed
from suara.election.form import counts_of
from suara.election.payloads import describe_unknown, other_election, unknown_fields
from suara.registry.catalog import RegistryView as Catalog
from suara.runtime.errors import FieldProblem, PermissionDenied, ResourceExhausted, ServiceError, Unauthenticated
from suara.runtime.ratelimit import RateLimiter, retry_ms
from suara.v1 import form_pb2, tally_pb2


@dataclass
class Prepared:
    """A verified, well-formed form: what the committer stores."""

    tps: str
    contest: str
    version: int
    payload: bytes
    payload_sha256: bytes
    signature: bytes
    device_id: str
    failed_checks: list[str]
    counts: dict[str, Any]
    photo_sha256: list[str]
    photos: list[Photo] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.tps, self.contest, self.version)


def _structure(request: tally_pb2.SubmitRequest) -> list[FieldProblem]:
    problems = []
    if not request.HasField("form"):
        return [FieldProblem("form", "missing: a SignedForm with payload, signature and device_id")]
    form = request.form
    if not form.payload:
        problems.append(FieldProblem("form.payload", "empty: the serialized CHasilForm that was signed"))
    if len(form.signature) != signing.SIGNATURE_BYTES:
        problems.append(
            FieldProblem(
                "form.signature",
                f"must be a {signing.SIGNATURE_BYTES}-byte Ed25519 signature, got {len(form.signature)} bytes",
            )
        )
    if not form.device_id:
        problems.append(FieldProblem("form.device_id", "empty: the id of the enrolled device key that signed"))
    return problems


INLINE_VERIFY = 4  # signatures verified on the event loop itself; more go to the thread pool


def _verify_all(jobs: list[tuple[bytes, bytes, bytes]]) -> list[bool]:
    # One executor hop for the whole call; Ed25519 releases the GIL.
    return [signing.verify(key, payload, sig) for key, payload, sig in jobs]


class Intake:
    def __init__(
        self,
        devices: DeviceKeys,
        catalog: Catalog,
        executor: Executor,
        photo_max_bytes: int,
        device_limit: RateLimiter | None = None,
    ) -> None:
        self.devices = devices
        self.catalog = catalog
        self.executor = executor
        self.photo_max_bytes = photo_max_bytes
        # Charged only once a signature verifies: a forger naming a device cannot spend its budget.
        self.device_limit = device_limit

    async def prepare(self, requests: list[tally_pb2.SubmitRequest]) -> list[Prepared | ServiceError]:
        results: list[Prepared | ServiceError | None] = [None] * len(requests)
        for i, request in enumerate(requests):
            problems = _structure(request)
            if problems:
                results[i] = InvalidForm(problems)
        pending = [i for i, r in enumerate(results) if r is None]
        keys = await self.devices.get_many(sorted({requests[i].form.device_id for i in pending}))
        jobs: list[int] = []
        for i in pending:
            device_id = requests[i].form.device_id
            if device_id not in keys:
                results[i] = Unauthenticated(
                    f"unknown device {device_id!r}: enroll the device with `suara device enroll` "
                    "(or the EnrollDevice RPC) before it submits"
                )
            else:
                jobs.append(i)
        verify = [
            (keys[requests[i].form.device_id].public_key, requests[i].form.payload, requests[i].form.signature)
            for i in jobs
        ]
        if len(verify) <= INLINE_VERIFY:
            # A thread hop (submit, wake, call back) costs more than one verification.
            verdicts = _verify_all(verify)
        else:
            verdicts = await asyncio.get_running_loop().run_in_executor(self.executor, _verify_all, verify)
        for i, ok in zip(jobs, verdicts, strict=True):
            device = keys[requests[i].form.device_id]
            if not ok:
                results[i] = Unauthenticated(
                    f"the signature does not verify with device {device.device_id}'s key: "
                    "the payload was altered, or it was signed with another key"
                )
                continue
            if device.revoked:  # signed by a revoked key: refused, and someone must go and look
                results[i] = await self._refuse_revoked(requests[i], device)
                continue
            if self.device_limit is not None and (wait := self.device_limit.take(device.device_id)) is not None:
                results[i] = ResourceExhausted(
                    f"device {device.device_id} sent more forms than a device sends in a night: at most "
                    f"{self.device_limit.burst:g} at once, then {self.device_limit.rate * 60:g} a minute "
                    "(SUARA_TALLY_DEVICE_BURST, SUARA_TALLY_DEVICE_RATE_PER_MIN); retry after the hint",
                    retry_after_ms=retry_ms(wait),
                )
                continue
            results[i] = await self._check_form(requests[i], device)
        return [r for r in results if r is not None]

    async def _refuse_revoked(self, request: tally_pb2.SubmitRequest, device: DeviceRecord) -> ServiceError:
        try:
            form = form_pb2.CHasilForm.FromString(request.form.payload)
            tps, contest, version = form.tps, form.contest, form.version
        except DecodeError:
            tps, contest, version = device.tps, "", 0
        await self.devices.refuse_revoked(device, tps, contest, version)
        return PermissionDenied(
            f"device {device.device_id} (TPS {device.tps}) is revoked: its forms are refused. A replaced phone "
            f"submits with the new key enrolled for TPS {device.tps} (`suara device enroll`)"
        )

    async def _check_form(self, request: tally_pb2.SubmitRequest, device: DeviceRecord) -> Prepared | ServiceError:
        payload = request.form.payload
        try:
            form = form_pb2.CHasilForm.FromString(payload)
        except DecodeError:
            return InvalidForm([FieldProblem("form.payload", "is not a serialized suara.v1.CHasilForm")])
        unknown = unknown_fields(form)
        if unknown:
            return InvalidForm([FieldProblem("form.payload", describe_unknown(unknown, "suara.v1.CHasilForm"))])
        election = await self.catalog.election(form.election_id)
        if form.election_id != election:
            return other_election("form", form.election_id, election)
        if form.tps != device.tps:
            return PermissionDenied(
                f"device {device.device_id} is enrolled for TPS {device.tps} and may not submit for TPS {form.tps!r}"
            )
        contest = await self.catalog.contest(form.contest)
        malformed = find_malformed(form, contest=contest, tps_known=await self.catalog.tps_known(form.tps))
        problems = [FieldProblem(v.field, v.description) for v in malformed]
        photo_hashes = list(form.photo_sha256)
        contents = [p.content for p in request.photos]
        if contents:  # decoding a photo takes milliseconds: off the event loop (Pillow releases the GIL)
            photos, photo_problems = await asyncio.get_running_loop().run_in_executor(
                self.executor, check_photos, contents, photo_hashes, self.photo_max_bytes
            )
        else:
            photos, photo_problems = [], []
        problems.extend(photo_problems)
        if problems:
            return InvalidForm(problems)
        return Prepared(
            tps=form.tps,
            contest=form.contest,
            version=form.version,
            payload=payload,
            payload_sha256=hashlib.sha256(payload).digest(),
            signature=request.form.signature,
            device_id=device.device_id,
            failed_checks=find_inconsistencies(form),
            counts=counts_of(form),
            photo_sha256=photo_hashes,
            photos=photos,
        )
