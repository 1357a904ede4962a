"""The tally gRPC service: wiring of intake, admission and group commit behind the API."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from services.tally import metrics
from services.tally.access import AdminTokens, access_interceptor
from services.tally.admission import DatabaseGate, InFlight
from services.tally.committer import CONFLICT, GroupCommitter, Receipt, Result
from services.tally.credentials import (
    MAX_DEVICES_PER_TPS,
    REVOKED_CHANNEL,
    DeviceKeys,
    DeviceRecord,
    EnrolledElsewhere,
    TooManyDevices,
    enroll_device,
    enroll_devices,
)
from services.tally.errors import InvalidForm, InvalidRequest
from services.tally.intake import Intake, Prepared
from services.tally.queries import QUERIES
from services.tally.relay import Relay, relay_for
from suara.client import service_names
from suara.election import codes, signing
from suara.election.chain import sign_head
from suara.election.outcomes import OUTCOMES
from suara.election.signing import ChainKey
from suara.registry.catalog import RegistryView as Catalog
from suara.runtime import database
from suara.runtime.auth.certificate import PeerCertificates
from suara.runtime.auth.principal import CALLER
from suara.runtime.database import Database, DatabaseUnavailable
from suara.runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldProblem,
    NotFound,
    ServiceError,
    Unavailable,
)
from suara.runtime.grpc_server import Server, create_server, serve_with_metrics
from suara.runtime.metrics import MetricsServer, watch_pool
from suara.runtime.notifications import ChannelListener
from suara.runtime.objects import ObjectStore, photo_store
from suara.runtime.pagination import Pager
from suara.runtime.ratelimit import PeerLimitInterceptor, RateLimiter
from suara.runtime.settings import SettingError, Settings, TallySettings
from suara.runtime.tls import server_tls
from suara.runtime.wire import SMALL_REQUEST_BYTES, TALLY_MAX_BATCH, tally_request_limits
from suara.v1 import tally_pb2, tally_pb2_grpc

log = structlog.stdlib.get_logger("suara.tally")

SERVICE_NAME = service_names.TALLY.full_name
# A TPS has at most MAX_VERSION versions of each of its few contests; a page is also cut at
# REPLY_BUDGET_BYTES of payloads, so no small request is answered with megabytes.
SUBMISSIONS = Pager("ListSubmissions", default_size=50, max_size=100, key_types=(str, int))
REPLY_BUDGET_BYTES = 1024 * 1024

# (stored outcome, is current) → what the submission is now
_STATUS = {
    ("ACCEPTED", True): tally_pb2.SUBMISSION_STATUS_CURRENT,
    ("QUARANTINED", True): tally_pb2.SUBMISSION_STATUS_CURRENT_QUARANTINED,
    ("ACCEPTED", False): tally_pb2.SUBMISSION_STATUS_REPLACED,
    ("QUARANTINED", False): tally_pb2.SUBMISSION_STATUS_REPLACED,
    ("SUPERSEDED", False): tally_pb2.SUBMISSION_STATUS_HISTORY,
}


def receipt_pb(receipt: Receipt) -> tally_pb2.Receipt:
    ts = Timestamp()
    ts.FromDatetime(receipt.received_at)
    return tally_pb2.Receipt(
        submission_id=receipt.submission_id,
        payload_sha256=receipt.payload_sha256.hex(),
        chain_position=receipt.chain_position,
        chain_hash=receipt.chain_hash.hex(),
        server_time=ts,
        chain=receipt.chain,
    )


def conflict_error(result: Result) -> AlreadyExists:
    """Same (tps, contest, version), different payload: the original is kept."""
    return AlreadyExists(
        f"version already stored with a different payload (submission {result.receipt.submission_id}, "
        f"sha256 {result.receipt.payload_sha256.hex()}); the original is kept. Submit a correction with a "
        f"version above {result.current_version}"
    )


def submission_pb(row: asyncpg.Record) -> tally_pb2.Submission:
    receipt = Receipt(
        str(row["id"]),
        bytes(row["payload_sha256"]),
        row["chain_position"],
        bytes(row["chain_hash"]),
        row["received_at"],
        row["chain"],
    )
    return tally_pb2.Submission(
        receipt=receipt_pb(receipt),
        tps=row["tps"],
        contest=row["contest"],
        version=row["version"],
        outcome=OUTCOMES[row["outcome"]],
        status=_STATUS[(row["outcome"], row["is_current"])],
        failed_checks=row["failed_checks"],
        device_id=row["device_id"],
        payload=bytes(row["payload"]),
        signature=bytes(row["signature"]),
        photo_sha256=row["photo_sha256"],
    )


class TallyService(tally_pb2_grpc.TallyServiceServicer):
    def __init__(
        self,
        db: Database,
        catalog: Catalog,
        settings: TallySettings,
        chain_key: ChainKey,
        photos: ObjectStore,
        chains: int = 1,
    ) -> None:
        self.db = db
        self.photos = photos
        self.settings = settings
        self.chain_key = chain_key
        self.chains = chains
        # The last head signed per chain, signed once: chain → (position, hash, signature).
        self._signed_heads: dict[int, tuple[int, bytes, bytes]] = {}
        self.gate = DatabaseGate(db, settings.retry_after_ms)
        self.in_flight = InFlight(settings.max_in_flight, settings.retry_after_ms)
        self.executor = ThreadPoolExecutor(settings.verify_threads, thread_name_prefix="verify")
        self.devices = DeviceKeys(db)
        device_limit = RateLimiter(settings.device_rate_per_min / 60, settings.device_burst)
        self.intake = Intake(self.devices, catalog, self.executor, settings.photo_max_bytes, device_limit)
        self.committer = GroupCommitter(db, self.gate, settings.commit_batch_max, settings.commit_wait_s, chains)

    async def _store(self, requests: list[tally_pb2.SubmitRequest]) -> list[Result | ServiceError]:
        """Admit, prepare and commit; one result per request, in order."""
        try:
            self.gate.check()
            self.in_flight.acquire(len(requests))
        except ServiceError as error:
            metrics.refused("unavailable" if isinstance(error, DatabaseUnavailable) else "overloaded", len(requests))
            raise
        # One deadline for the whole call, so a database that hangs (rather than refuses) still
        # yields UNAVAILABLE in time: not stored as far as the caller knows, and a resend is
        # answered DUPLICATE if the commit did land after all.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.commit_wait_s
        try:
            try:
                async with database.deadline(deadline):  # no task of its own, unlike wait_for
                    prepared = await self.intake.prepare(requests)
            except DatabaseUnavailable as exc:
                self.gate.mark_down(exc)
                metrics.refused("unavailable", len(requests))
                raise self.gate.error(timed_out=exc.timed_out) from exc
            prepared = await self._put_photos(prepared, deadline)
            ready = [p for p in prepared if not isinstance(p, ServiceError)]
            futures = iter(self.committer.enqueue(ready))
            waits = [None if isinstance(p, ServiceError) else next(futures) for p in prepared]
            pending = [f for f in waits if f is not None]
            if pending:
                await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()))
            outcomes: list[Result | ServiceError] = []
            for p, fut in zip(prepared, waits, strict=True):
                if fut is None:
                    assert isinstance(p, ServiceError)
                    outcomes.append(p)
                elif not fut.done():  # past the deadline: the commit may still land
                    outcomes.append(self.gate.error(timed_out=True))
                elif isinstance(fut.exception(), ServiceError):
                    outcomes.append(fut.exception())  # type: ignore[arg-type]
                else:
                    outcomes.append(fut.result())
            metrics.count(prepared, outcomes)
            return outcomes
        finally:
            self.in_flight.release(len(requests))

    async def _put_photos(
        self, prepared: list[Prepared | ServiceError], deadline: float
    ) -> list[Prepared | ServiceError]:
        """Each form's photos into the photo store BEFORE the form commits: a committed form always has its
        photos, while a form that then fails to commit leaves at most objects nothing names (harmless;
        a resend puts nothing new). A form whose photos could not all be stored is not committed."""
        puts = {
            photo.sha256: photo for p in prepared if not isinstance(p, ServiceError) for photo in p.photos
        }  # a photo sent by several forms of the call: put once
        if not puts:
            return prepared
        failed: dict[str, ServiceError] = {}
        try:
            async with asyncio.timeout_at(deadline):
                results = await asyncio.gather(
                    *(self.photos.put(sha, photo.content, photo.content_type) for sha, photo in puts.items()),
                    return_exceptions=True,
                )
        except TimeoutError:
            log.warning("photo_store_slow", store=self.photos.describe(), photos=len(puts))
            error = Unavailable(
                f"the photo store did not answer within {self.settings.commit_wait_s:g} s; the form was not "
                "stored. Resend it",
                retry_after_ms=self.settings.retry_after_ms,
            )
            failed = dict.fromkeys(puts, error)
        else:
            for sha, result in zip(puts, results, strict=True):
                if isinstance(result, BaseException):
                    log.error("photo_store_failed", store=self.photos.describe(), sha256=sha, error=str(result))
                    failed[sha] = Unavailable(
                        f"storing photo {sha} failed; the form was not stored. Resend it",
                        retry_after_ms=self.settings.retry_after_ms,
                    )
        if not failed:
            return prepared
        return [
            next((failed[ph.sha256] for ph in p.photos if ph.sha256 in failed), p)
            if not isinstance(p, ServiceError)
            else p
            for p in prepared
        ]

    async def Submit(
        self, request: tally_pb2.SubmitRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tally_pb2.SubmitResponse:
        (result,) = await self._store([request])
        if isinstance(result, ServiceError):
            raise result
        if result.outcome == CONFLICT:
            raise conflict_error(result)
        return tally_pb2.SubmitResponse(
            outcome=OUTCOMES[result.outcome],
            receipt=receipt_pb(result.receipt),
            failed_checks=result.failed_checks,
            current_version=result.current_version,
        )

    async def SubmitBatch(
        self, request: tally_pb2.SubmitBatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tally_pb2.SubmitBatchResponse:
        if len(request.items) > TALLY_MAX_BATCH:
            raise InvalidForm(
                [
                    FieldProblem(
                        "items",
                        f"at most {TALLY_MAX_BATCH} forms per batch, got {len(request.items)}; split it",
                    )
                ]
            )
        results = await self._store(list(request.items))
        response = tally_pb2.SubmitBatchResponse()
        for index, result in enumerate(results):
            item = response.results.add(index=index)
            if isinstance(result, ServiceError):
                item.outcome = tally_pb2.OUTCOME_REJECTED
                item.error.CopyFrom(_item_error(result))
            elif result.outcome == CONFLICT:
                item.outcome = tally_pb2.OUTCOME_CONFLICT
                item.error.CopyFrom(_item_error(conflict_error(result)))
                item.current_version = result.current_version
            else:
                item.outcome = OUTCOMES[result.outcome]
                item.receipt.CopyFrom(receipt_pb(result.receipt))
                item.failed_checks.extend(result.failed_checks)
                item.current_version = result.current_version
        return response

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        self.gate.check()
        try:
            return await self.db.fetch(query, *args, timeout_s=self.settings.commit_wait_s)
        except DatabaseUnavailable as exc:
            self.gate.mark_down(exc)
            raise self.gate.error() from exc

    async def GetSubmission(
        self, request: tally_pb2.GetSubmissionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tally_pb2.GetSubmissionResponse:
        import uuid

        try:
            submission_id = uuid.UUID(request.submission_id)
        except ValueError:
            raise InvalidForm(
                [FieldProblem("submission_id", "must be a submission id (a UUID) from a receipt")]
            ) from None
        rows = await self._fetch(QUERIES.submission_by_id, submission_id)
        if not rows:
            raise NotFound(f"no submission {request.submission_id}")
        return tally_pb2.GetSubmissionResponse(submission=submission_pb(rows[0]))

    async def ListSubmissions(
        self, request: tally_pb2.ListSubmissionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tally_pb2.ListSubmissionsResponse:
        if not codes.is_tps_code(request.tps):
            raise InvalidForm(
                [FieldProblem("tps", f"must be a {codes.TPS_LENGTH}-digit TPS code, got {request.tps!r}")]
            )
        filters = (request.tps, request.contest)
        size = SUBMISSIONS.size(request.page_size)
        contest, version = SUBMISSIONS.after(request.page_token, filters) or (None, None)
        rows = await self._fetch(QUERIES.submissions_for_tps, *filters, contest, version, size + 1)
        fits, spent = 0, 0
        for row in rows[:size]:
            spent += len(row["payload"])
            if fits and spent > REPLY_BUDGET_BYTES:
                break
            fits += 1
        if fits < size:  # the rest on the next page
            rows, size = rows[: fits + 1], fits
        page, token = SUBMISSIONS.page(rows, size, lambda r: (r["contest"], r["version"]), filters)
        return tally_pb2.ListSubmissionsResponse(submissions=[submission_pb(r) for r in page], next_page_token=token)

    async def GetChainHead(
        self, request: tally_pb2.GetChainHeadRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tally_pb2.GetChainHeadResponse:
        rows = await self._fetch(QUERIES.chain_heads)
        heads = []
        for row in rows:
            chain, position, head_hash = row["chain"], row["position"], bytes(row["hash"])
            # Signed here, once per head handed out, not per commit: the commit path stays as cheap as it was.
            signed = self._signed_heads.get(chain)
            if signed is None or signed[:2] != (position, head_hash):
                signature = sign_head(self.chain_key, position, head_hash, chain, self.chains)
                signed = self._signed_heads[chain] = (position, head_hash, signature)
            heads.append(
                tally_pb2.ChainHead(
                    position=position,
                    hash=head_hash.hex(),
                    signature=signed[2],
                    key_id=self.chain_key.key_id,
                    chain=chain,
                    chains=self.chains,
                )
            )
        key = tally_pb2.ChainKey(key_id=self.chain_key.key_id, public_key=self.chain_key.public_key)
        # chain_head alone is the whole chain when there is one; with several, chain_heads holds every head.
        return tally_pb2.GetChainHeadResponse(chain_head=heads[0], chain_key=key, chain_heads=heads)

    async def GetPhoto(
        self, request: tally_pb2.GetPhotoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tally_pb2.GetPhotoResponse:
        if len(request.sha256) != 64 or not all(c in "0123456789abcdef" for c in request.sha256):
            raise InvalidForm([FieldProblem("sha256", f"must be 64 lowercase hex digits, got {request.sha256!r}")])
        rows = await self._fetch(QUERIES.photo, request.sha256)
        if not rows:
            raise NotFound(f"no photo {request.sha256}: it arrives with the form that lists it")
        row = rows[0]
        content = row["content"]
        if content is None:  # stored since migration 0008: the bytes are in the photo store
            content = await self.photos.get(request.sha256)
            if content is None:
                log.error("photo_missing_from_store", sha256=request.sha256, store=self.photos.describe())
                raise FailedPrecondition(
                    f"photo {request.sha256} arrived with a committed form but is missing from the photo store "
                    f"{self.photos.describe()}: restore it from the store's backup (docs/runbook.md)"
                )
        photo = tally_pb2.StoredPhoto(sha256=row["sha256"], content_type=row["content_type"], content=content)
        return tally_pb2.GetPhotoResponse(photo=photo)

    async def EnrollDevice(
        self, request: tally_pb2.EnrollDeviceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tally_pb2.EnrollDeviceResponse:
        problems = await self._device_problems(request, "")
        if problems:
            raise InvalidRequest(problems)
        device_id = signing.device_id_for(request.public_key)
        try:
            await enroll_device(
                self.db, device_id, request.tps, request.public_key, request.label, actor=_admin_actor()
            )
        except ValueError as exc:
            raise InvalidRequest([FieldProblem("public_key", str(exc))]) from None
        except TooManyDevices as exc:
            raise _too_many(exc, {request.tps: ""}) from None
        self.devices.remember(DeviceRecord(device_id, request.tps, request.public_key))
        election = self.intake.catalog.election_id
        return tally_pb2.EnrollDeviceResponse(device_id=device_id, tps=request.tps, election_id=election)

    async def EnrollDevices(
        self, request: tally_pb2.EnrollDevicesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tally_pb2.EnrollDevicesResponse:
        devices = list(request.devices)
        if not 1 <= len(devices) <= TALLY_MAX_BATCH:
            raise InvalidRequest(
                [FieldProblem("devices", f"send 1 to {TALLY_MAX_BATCH} devices per call, got {len(devices)}")]
            )
        problems: list[FieldProblem] = []
        first_index: dict[bytes, int] = {}
        for i, device in enumerate(devices):
            problems += await self._device_problems(device, f"devices[{i}].")
            seen = first_index.setdefault(device.public_key, i)
            if seen != i:
                problems.append(FieldProblem(f"devices[{i}].public_key", f"the same key as devices[{seen}]"))
        if problems:
            raise InvalidRequest(problems)
        ids = [signing.device_id_for(d.public_key) for d in devices]
        try:
            await enroll_devices(
                self.db, ids, [d.tps for d in devices], [d.public_key for d in devices], [d.label for d in devices],
                actor=_admin_actor(),
            )  # fmt: skip
        except EnrolledElsewhere as exc:
            raise InvalidRequest(
                [
                    FieldProblem(f"devices[{ids.index(device_id)}].public_key", f"already enrolled for TPS {tps}")
                    for device_id, tps in exc.devices
                ]
            ) from None
        except TooManyDevices as exc:
            first: dict[str, str] = {}
            for i, device in enumerate(devices):
                first.setdefault(device.tps, f"devices[{i}].")
            raise _too_many(exc, first) from None
        for device_id, device in zip(ids, devices, strict=True):
            self.devices.remember(DeviceRecord(device_id, device.tps, device.public_key))
        return tally_pb2.EnrollDevicesResponse(
            devices=[
                tally_pb2.EnrollDeviceResponse(device_id=i, tps=d.tps, election_id=self.intake.catalog.election_id)
                for i, d in zip(ids, devices, strict=True)
            ]
        )

    async def _device_problems(self, device: tally_pb2.EnrollDeviceRequest, prefix: str) -> list[FieldProblem]:
        problems = []
        if not await self.intake.catalog.tps_known(device.tps):
            problems.append(FieldProblem(f"{prefix}tps", f"unknown TPS {device.tps!r}: not in the registry"))
        if len(device.public_key) != signing.PUBLIC_KEY_BYTES:
            problems.append(
                FieldProblem(
                    f"{prefix}public_key", f"must be a raw 32-byte Ed25519 key, got {len(device.public_key)} bytes"
                )
            )
        return problems

    async def close(self) -> None:
        await self.committer.close()
        await self.gate.close()
        self.executor.shutdown(wait=False)
        await self.photos.close()


def _admin_actor() -> str:
    """Who is calling an admin method, for tally.admin_log: the credential the interceptor proved."""
    caller = CALLER.get()
    return caller.id if caller is not None else "unknown"


def _too_many(exc: TooManyDevices, prefix: dict[str, str]) -> FailedPrecondition:
    return FailedPrecondition(
        f"at most {MAX_DEVICES_PER_TPS} live device keys per TPS; nothing was enrolled",
        violations=[
            FieldProblem(
                f"{prefix.get(tps, '')}tps",
                f"TPS {tps} would have {live} live device keys, above the cap of {MAX_DEVICES_PER_TPS}: "
                "revoke a lost device's key (`suara device revoke`) before enrolling its replacement",
            )
            for tps, live in exc.tps
        ],
    )


def _item_error(error: ServiceError) -> tally_pb2.ItemError:
    return tally_pb2.ItemError(
        code=error.code.value[0],
        message=error.message,
        field_violations=[tally_pb2.FieldViolation(field=v.field, description=v.description) for v in error.violations],
        retry_after_ms=error.retry_after_ms or 0,
    )


class TallyApp:
    """A running tally: pool, service and gRPC server. `start()` then `stop()`."""

    LISTEN_WAIT_S = 5.0  # at start, how long to wait for the revocation listener before serving anyway

    def __init__(
        self, server: Server, port: int, service: TallyService, db: Database, admins: AdminTokens, database_url: str
    ) -> None:
        self.server = server
        self.port = port
        self.service = service
        self.db = db
        self.admins = admins
        self.relay: Relay | None = None  # delivers the outbox to aggregate, when a credential is configured
        # Revocations reach this process's caches within a second; see migration 0004.
        self.revocations = ChannelListener(
            database_url, REVOKED_CHANNEL, self._revoked, self._forget_all, application="suara-tally-revocations"
        )

    def _revoked(self, payload: str) -> None:
        kind, _, ident = payload.partition(":")
        if kind == "device":
            self.service.devices.forget(ident)
        elif kind == "admin":
            self.admins.forget(ident)
        log.info("revocation_received", kind=kind, id=ident)

    def _forget_all(self) -> None:
        self.service.devices.clear()
        self.admins.clear()

    async def sample_metrics(self) -> None:
        """The gauges read at a scrape: state in memory, then the outbox by one query."""
        metrics.IN_FLIGHT.set(self.service.in_flight.current)
        metrics.GATE_OPEN.set(1 if self.service.gate.available else 0)
        metrics.RELAY_LEADER.set(1 if self.relay is not None and self.relay.active else 0)
        await metrics.sample_outbox(self.db)

    @property
    def internal_port(self) -> int:
        """The internal listener's port: admins and services, by client certificate."""
        assert self.server.internal_port is not None
        return self.server.internal_port

    @classmethod
    async def create(cls, settings: Settings, database_url: str, chain_key: ChainKey | None = None) -> TallyApp:
        """`chain_key`: the key to sign heads with; None: the one in SUARA_TALLY_CHAIN_KEY's file."""
        tls = server_tls(settings, "tally")  # before the pool: missing certificates stop it at once
        certificates = None if tls is None else PeerCertificates(tls.revocations)
        if chain_key is None:
            chain_key = load_chain_key(settings)
        photos = photo_store(settings)  # before the pool too: a bad SUARA_PHOTO_STORE stops it at once
        db = await Database.open(database_url, size=settings.database.pool_size, application="suara-tally")
        catalog = await Catalog.load(db)
        if certificates is not None:
            certificates.election = catalog.election  # a rehearsal's certificate is refused on the night
        try:
            chains = await election_chains(db, settings.tally.chains)
        except BaseException:
            await db.close()
            raise
        service = TallyService(db, catalog, settings.tally, chain_key, photos, chains)
        admins = AdminTokens(db)
        server, port = create_server(
            lambda s: tally_pb2_grpc.add_TallyServiceServicer_to_server(service, s),
            [SERVICE_NAME],
            host=settings.tally.host,
            port=settings.tally.port,
            interceptors=[
                # Before any credential is looked at: a flood from one address costs one bucket lookup.
                PeerLimitInterceptor(
                    RateLimiter(settings.tally.peer_rate, settings.tally.peer_burst),
                    "SUARA_TALLY_PEER_RATE",
                    frozenset(p.strip() for p in settings.tally.trusted_proxies.split(",") if p.strip()),
                    lambda: metrics.refused("rate_limited"),
                ),
                access_interceptor(db, admins, certificates),  # admin methods; devices prove themselves by signing
            ],
            reuse_port=settings.tally.shared_port,
            request_limits={
                service_names.method_path(service_names.TALLY, name): limit
                for name, limit in tally_request_limits(settings.tally.photo_max_bytes).items()
            },
            default_request_limit=SMALL_REQUEST_BYTES,
            tls=tls,
            internal_port=settings.tally.internal_port,
            metrics_service="tally" if settings.metrics_on else None,
        )
        if settings.metrics_on:
            watch_pool("tally", db)
            metrics.ready(catalog.contests)
        if certificates is not None:
            certificates.internal_address = f"{settings.tally.host}:{server.internal_port}"
        service.gate.on_change = server.set_serving  # health follows the database: NOT_SERVING while it is away
        app = cls(server, port, service, db, admins, database_url)
        app.relay = relay_for(settings, database_url)
        return app

    async def start(self) -> None:
        self.revocations.start()
        try:
            await asyncio.wait_for(self.revocations.listening.wait(), self.LISTEN_WAIT_S)
        except TimeoutError:  # the caches then live by their short expiry until the listener gets through
            log.warning("revocations_not_followed_yet", within_s=self.LISTEN_WAIT_S)
        self.service.committer.start()
        await self.server.start()
        log.info(
            "tally_serving",
            address=f"{self.service.settings.host}:{self.port}",
            internal=f"{self.service.settings.host}:{self.server.internal_port}",
            tps=len(self.service.intake.catalog.tps),
            contests=sorted(self.service.intake.catalog.contests),
        )
        if self.relay is not None:
            self.relay.start()

    async def stop(self, grace: float = 5.0) -> None:
        """Health NOT_SERVING and in-flight calls given `grace` to finish, then the relay, the committer, the pool."""
        await self.server.stop(grace)
        if self.relay is not None:
            await self.relay.stop()
        await self.revocations.stop()
        await self.service.close()
        await self.db.close()
        log.info("tally_stopped")


async def election_chains(db: Database, wanted: int) -> int:
    """The number of chains the election runs: SUARA_TALLY_CHAINS until the first form is stored,
    then fixed (docs/domain.md, "The chain"); a different setting after that is refused."""
    row = (await db.fetch(QUERIES.chain_count))[0]
    if row["chains"] != wanted and not row["stored"]:
        await db.execute(QUERIES.set_chain_count, wanted)
        row = (await db.fetch(QUERIES.chain_count))[0]
        if row["chains"] == wanted:
            log.info("chains_set", chains=wanted)
    if row["chains"] != wanted:
        raise SettingError(
            "SUARA_TALLY_CHAINS",
            wanted,
            f"{row['chains']}: this election's forms are split into {row['chains']} chain(s), fixed since its "
            "first form was stored. Start tally with that value",
        )
    chains: int = row["chains"]
    return chains


def chain_key_path(settings: Settings) -> Path:
    return Path(settings.tally.chain_key) if settings.tally.chain_key else settings.data_dir / "chain.key.json"


def load_chain_key(settings: Settings) -> ChainKey:
    """The chain key of SUARA_TALLY_CHAIN_KEY, made on a fresh deployment's first start."""
    path = chain_key_path(settings)
    try:
        key, created = ChainKey.load_or_create(path)
    except (OSError, ValueError) as exc:
        raise SettingError(
            "SUARA_TALLY_CHAIN_KEY", str(path), f"a readable chain key file, or a writable path for a new one ({exc})"
        ) from exc
    if created:
        log.warning("chain_key_created", path=str(path), key_id=key.key_id)
    else:
        log.info("chain_key", path=str(path), key_id=key.key_id)
    return key


async def serve(settings: Settings, database_url: str) -> None:
    app = await TallyApp.create(settings, database_url)
    exporter = MetricsServer(settings.tally.host, settings.tally.metrics_port) if settings.metrics_on else None
    await serve_with_metrics(app.start, app.stop, settings.shutdown_grace_s, exporter, app.sample_metrics)
