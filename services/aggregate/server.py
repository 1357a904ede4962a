"""The aggregate gRPC service: validation, the roll-up and the reads behind the API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import grpc
import structlog

from services.aggregate import metrics, recap, views
from services.aggregate.access import access_interceptor
from services.aggregate.catalog import Catalog
from services.aggregate.limits import aggregate_request_limits
from services.aggregate.rollup import Rollup
from services.aggregate.updates import area_updates, leaf_updates, reply
from suara.client import service_names
from suara.runtime import tracing
from suara.runtime.auth.certificate import PeerCertificates
from suara.runtime.auth.service_tokens import ServiceTokens
from suara.runtime.database import Database
from suara.runtime.grpc_server import Server, create_server, serve_with_metrics
from suara.runtime.metrics import MetricsServer, watch_pool
from suara.runtime.notifications import ChannelListener
from suara.runtime.settings import Settings
from suara.runtime.tls import server_tls
from suara.runtime.wire import SMALL_REQUEST_BYTES
from suara.v1 import aggregate_pb2, aggregate_pb2_grpc

# Where aggregate's triggers announce revocations (migration 0005): "service:<id>", "official:<id>".
REVOKED_CHANNEL = "suara_aggregate_revoked"
LISTEN_WAIT_S = 5.0  # at start, how long to wait for the revocation listener before serving anyway

log = structlog.stdlib.get_logger("suara.aggregate")

SERVICE_NAME = service_names.AGGREGATE.full_name


class AggregateService(aggregate_pb2_grpc.AggregateServiceServicer):
    """A lost database is UNAVAILABLE (suara.runtime.database): resend later, applying is idempotent."""

    def __init__(self, db: Database, catalog: Catalog) -> None:
        self.db = db
        self.catalog = catalog
        self.rollup = Rollup(db)

    async def ApplyUpdates(
        self, request: aggregate_pb2.ApplyUpdatesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> aggregate_pb2.ApplyUpdatesResponse:
        started = time.perf_counter()
        checked = await leaf_updates(request, self.catalog)
        with tracing.span("aggregate.apply", {"suara.updates": len(checked.updates)}) as span:
            # Kept with the sequence the batch takes: publish's cycle span links to the applies it published.
            applied = await self.rollup.apply_leaves(checked.updates, tracing.traceparent(span))
            if span is not None:
                span.set_attribute("suara.aggregate.sequence", applied.sequence)
        outcomes, refusals = reply(checked, applied.outcomes, applied.refused)
        metrics.applied(outcomes, applied.sequence, started)
        _log_refusals("ApplyUpdates", refusals, [(u.tps, u.contest, u.version) for u in request.updates])
        return aggregate_pb2.ApplyUpdatesResponse(outcomes=outcomes, sequence=applied.sequence, refusals=refusals)

    async def ApplyAreaUpdates(
        self, request: aggregate_pb2.ApplyAreaUpdatesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> aggregate_pb2.ApplyAreaUpdatesResponse:
        started = time.perf_counter()
        checked = area_updates(request, self.catalog)
        applied = await self.rollup.apply_feed(request.source, checked.updates)
        outcomes, refusals = reply(checked, applied.outcomes, applied.refused)
        metrics.applied(outcomes, applied.sequence, started)
        _log_refusals("ApplyAreaUpdates", refusals, [(u.area, u.contest, u.version) for u in request.updates])
        return aggregate_pb2.ApplyAreaUpdatesResponse(outcomes=outcomes, sequence=applied.sequence, refusals=refusals)

    async def GetArea(
        self, request: aggregate_pb2.GetAreaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> aggregate_pb2.GetAreaResponse:
        view = await views.get_area(self.db, self.catalog, request.area, request.contest)
        return aggregate_pb2.GetAreaResponse(view=view)

    async def GetAreas(
        self, request: aggregate_pb2.GetAreasRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> aggregate_pb2.GetAreasResponse:
        return await views.get_areas(self.db, self.catalog, request.contest, list(request.areas))

    async def Changes(
        self, request: aggregate_pb2.ChangesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> aggregate_pb2.ChangesResponse:
        return await views.changes(self.db, request.since, request.limit)

    async def SubmitRecap(
        self, request: aggregate_pb2.SubmitRecapRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> aggregate_pb2.SubmitRecapResponse:
        return await recap.submit_recap(self.db, self.catalog, request)

    async def GetReconciliation(
        self, request: aggregate_pb2.GetReconciliationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> aggregate_pb2.GetReconciliationResponse:
        found = await recap.get_reconciliation(self.db, self.catalog, request.area, request.contest)
        return aggregate_pb2.GetReconciliationResponse(reconciliation=found)

    async def ListMismatches(
        self, request: aggregate_pb2.ListMismatchesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> aggregate_pb2.ListMismatchesResponse:
        return await recap.list_mismatches(self.db, self.catalog, request)


def _log_refusals(
    method: str, refusals: Sequence[aggregate_pb2.UpdateRefusal], keys: Sequence[tuple[str, str, int]]
) -> None:
    # The sender sets each aside (tally: its dead letters); here, a writer sent what no form can hold.
    for r in refusals:
        where, contest, version = keys[r.index]
        log.warning(
            "update_refused", method=method, index=r.index, area=where[:16], contest=contest[:16], version=version,
            reason=r.reason,
        )  # fmt: skip


class AggregateApp:
    """A running aggregate: pool, service and gRPC server. `start()` then `stop()`."""

    def __init__(self, server: Server, port: int, service: AggregateService, settings: Settings) -> None:
        self.server = server
        self.port = port
        self.service = service
        self.settings = settings

    @property
    def db(self) -> Database:
        return self.service.db

    @property
    def internal_port(self) -> int:
        """The internal listener's port: services, by client certificate."""
        assert self.server.internal_port is not None
        return self.server.internal_port

    @classmethod
    async def create(
        cls,
        settings: Settings,
        database_url: str,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> AggregateApp:
        """Every call needs a service credential (writer for Apply*, reader for GetArea/Changes);
        `interceptors` run after that check."""
        tls = server_tls(settings, "aggregate")  # before the pool: missing certificates stop it at once
        certificates = None if tls is None else PeerCertificates(tls.revocations)
        db = await Database.open(database_url, size=settings.database.pool_size, application="suara-aggregate")
        try:
            catalog = await Catalog.load(db)
            if certificates is not None:
                certificates.election = catalog.election  # a rehearsal's certificate is refused on the night
            service = AggregateService(db, catalog)
            metrics.HEAD.set(await service.rollup.seed())
        except BaseException:
            await db.close()
            raise
        access = access_interceptor(db, certificates)
        server, port = create_server(
            lambda s: aggregate_pb2_grpc.add_AggregateServiceServicer_to_server(service, s),
            [SERVICE_NAME],
            host=settings.aggregate.host,
            port=settings.aggregate.port,
            interceptors=[access, *interceptors],
            # From the contests read at start: one added later with more or longer choice ids than any of
            # them has its largest batches refused (RESOURCE_EXHAUSTED) until aggregate restarts.
            request_limits={
                service_names.method_path(service_names.AGGREGATE, name): limit
                for name, limit in aggregate_request_limits(catalog.contests.values()).items()
            },
            default_request_limit=SMALL_REQUEST_BYTES,
            tls=tls,
            internal_port=settings.aggregate.internal_port,
            metrics_service="aggregate" if settings.metrics_on else None,
        )
        if settings.metrics_on:
            watch_pool("aggregate", db)
        if certificates is not None:
            certificates.internal_address = f"{settings.aggregate.host}:{server.internal_port}"
        app = cls(server, port, service, settings)
        credentials = access.authenticator

        def revoked(payload: str) -> None:
            kind, _, ident = payload.partition(":")
            if kind == "service" and isinstance(credentials, ServiceTokens):
                credentials.forget(ident)
            log.info("revocation_received", kind=kind, id=ident)  # officials: looked up on every recap

        def forget_all() -> None:
            if isinstance(credentials, ServiceTokens):
                credentials.clear()

        app.revocations = ChannelListener(
            database_url, REVOKED_CHANNEL, revoked, forget_all, application="suara-aggregate-revocations"
        )
        return app

    revocations: ChannelListener | None = None

    async def start(self) -> None:
        if self.revocations is not None:
            self.revocations.start()
            try:
                await asyncio.wait_for(self.revocations.listening.wait(), LISTEN_WAIT_S)
            except TimeoutError:  # cached credentials then live by their short expiry until it gets through
                log.warning("revocations_not_followed_yet", within_s=LISTEN_WAIT_S)
        await self.server.start()
        log.info(
            "aggregate_serving",
            address=f"{self.settings.aggregate.host}:{self.port}",
            internal=f"{self.settings.aggregate.host}:{self.server.internal_port}",
            tps=len(self.service.catalog.tps),
            contests=sorted(self.service.catalog.contests),
        )

    async def stop(self, grace: float = 5.0) -> None:
        """Health NOT_SERVING and in-flight calls given `grace` to finish, then the pool."""
        await self.server.stop(grace)
        if self.revocations is not None:
            await self.revocations.stop()
        await self.db.close()
        log.info("aggregate_stopped")


async def serve(settings: Settings, database_url: str) -> None:
    app = await AggregateApp.create(settings, database_url)
    exporter = MetricsServer(settings.aggregate.host, settings.aggregate.metrics_port) if settings.metrics_on else None
    await serve_with_metrics(app.start, app.stop, settings.shutdown_grace_s, exporter)
