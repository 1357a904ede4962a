"""The aggregate gRPC service: validation, the roll-up and the reads behind the API."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import asyncpg
import grpc
import structlog

from services.aggregate import recap, views
from services.aggregate.catalog import Catalog
from services.aggregate.errors import DatabaseUnavailable
from services.aggregate.rollup import Rollup
from services.aggregate.updates import area_updates, leaf_updates
from suara.client import service_names
from suara.runtime.database import CONNECTION_ERRORS, create_pool
from suara.runtime.grpc_server import Server, create_server, serve_until_signal
from suara.runtime.service_auth import (
    PgCredentialStore,
    ServiceAuthInterceptor,
    aggregate_rules,
    aggregate_self_authenticated,
)
from suara.runtime.settings import Settings
from suara.v1 import aggregate_pb2, aggregate_pb2_grpc

log = structlog.stdlib.get_logger("suara.aggregate")

SERVICE_NAME = service_names.AGGREGATE.full_name
T = TypeVar("T")


async def _db(call: Awaitable[T]) -> T:
    """A lost database is UNAVAILABLE (resend later; applying is idempotent), not INTERNAL."""
    try:
        return await call
    except CONNECTION_ERRORS as exc:
        raise DatabaseUnavailable(f"the database is unavailable ({type(exc).__name__}); retry later") from exc


class AggregateService(aggregate_pb2_grpc.AggregateServiceServicer):
    def __init__(self, pool: asyncpg.Pool, catalog: Catalog) -> None:
        self.pool = pool
        self.catalog = catalog
        self.rollup = Rollup(pool)

    async def ApplyUpdates(
        self, request: aggregate_pb2.ApplyUpdatesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> aggregate_pb2.ApplyUpdatesResponse:
        updates = await _db(leaf_updates(request, self.catalog))
        applied = await _db(self.rollup.apply_leaves(updates))
        return aggregate_pb2.ApplyUpdatesResponse(outcomes=applied.outcomes, sequence=applied.sequence)

    async def ApplyAreaUpdates(
        self, request: aggregate_pb2.ApplyAreaUpdatesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> aggregate_pb2.ApplyAreaUpdatesResponse:
        updates = area_updates(request, self.catalog)
        applied = await _db(self.rollup.apply_feed(request.source, updates))
        return aggregate_pb2.ApplyAreaUpdatesResponse(outcomes=applied.outcomes, sequence=applied.sequence)

    async def GetArea(
        self, request: aggregate_pb2.GetAreaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> aggregate_pb2.GetAreaResponse:
        view = await _db(views.get_area(self.pool, self.catalog, request.area, request.contest))
        return aggregate_pb2.GetAreaResponse(view=view)

    async def GetAreas(
        self, request: aggregate_pb2.GetAreasRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> aggregate_pb2.GetAreasResponse:
        return await _db(views.get_areas(self.pool, self.catalog, request.contest, list(request.areas)))

    async def Changes(
        self, request: aggregate_pb2.ChangesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> aggregate_pb2.ChangesResponse:
        return await _db(views.changes(self.pool, request.since, request.limit))

    async def SubmitRecap(
        self, request: aggregate_pb2.SubmitRecapRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> aggregate_pb2.SubmitRecapResponse:
        return await _db(recap.submit_recap(self.pool, self.catalog, request))

    async def GetReconciliation(
        self, request: aggregate_pb2.GetReconciliationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> aggregate_pb2.GetReconciliationResponse:
        found = await _db(recap.get_reconciliation(self.pool, self.catalog, request.area, request.contest))
        return aggregate_pb2.GetReconciliationResponse(reconciliation=found)

    async def ListMismatches(
        self, request: aggregate_pb2.ListMismatchesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> aggregate_pb2.ListMismatchesResponse:
        return await _db(recap.list_mismatches(self.pool, self.catalog, request))


class AggregateApp:
    """A running aggregate: pool, service and gRPC server. `start()` then `stop()`."""

    def __init__(self, server: Server, port: int, service: AggregateService, settings: Settings) -> None:
        self.server = server
        self.port = port
        self.service = service
        self.settings = settings

    @property
    def pool(self) -> asyncpg.Pool:
        return self.service.pool

    @classmethod
    async def create(
        cls,
        settings: Settings,
        database_url: str,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> AggregateApp:
        """Every call needs a service credential (writer for Apply*, reader for GetArea/Changes);
        `interceptors` run after that check."""
        pool = await create_pool(database_url, size=settings.db_pool_size, application="suara-aggregate")
        try:
            catalog = await Catalog.load(pool)
            service = AggregateService(pool, catalog)
            await service.rollup.seed()
        except BaseException:
            await pool.close()
            raise
        server, port = create_server(
            lambda s: aggregate_pb2_grpc.add_AggregateServiceServicer_to_server(service, s),
            [SERVICE_NAME],
            host=settings.aggregate_host,
            port=settings.aggregate_port,
            interceptors=[
                ServiceAuthInterceptor(
                    PgCredentialStore(pool), aggregate_rules(), self_authenticated=aggregate_self_authenticated()
                ),
                *interceptors,
            ],
        )
        return cls(server, port, service, settings)

    async def start(self) -> None:
        await self.server.start()
        log.info(
            "aggregate_serving",
            address=f"{self.settings.aggregate_host}:{self.port}",
            tps=len(self.service.catalog.tps),
            contests=sorted(self.service.catalog.contests),
        )

    async def stop(self, grace: float = 5.0) -> None:
        await self.server.stop(grace)
        await self.pool.close()


async def serve(settings: Settings, database_url: str) -> None:
    app = await AggregateApp.create(settings, database_url)

    async def on_stop() -> None:
        await app.pool.close()
        log.info("aggregate_stopped")

    await serve_until_signal(app.start, app.server, settings.shutdown_grace_s, on_stop)
