"""`suara service revoke`: a service credential revoked while aggregate serves is refused within a second."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import grpc

from suara.v1 import aggregate_pb2
from tests.support.aggregate import start_aggregate
from tests.support.processes import run_suara
from tests.support.waiting import poll_until


async def test_a_reader_revoked_while_aggregate_serves_is_refused_within_a_second(
    cli_env: dict[str, str], db: asyncpg.Connection, db_url: str, tmp_path: Path
) -> None:
    aggregate = await start_aggregate(db_url, db)
    try:
        request = aggregate_pb2.GetAreaRequest(area="", contest="ppwp")
        await aggregate.stub.GetArea(request)  # aggregate now holds the reader in its cache
        reader = await db.fetchval("SELECT id FROM aggregate.service_credential WHERE role = 'reader'")
        revoked = await run_suara("service", "revoke", reader, env=cli_env, cwd=tmp_path)
        loop = asyncio.get_running_loop()
        revoked_at = loop.time()
        assert revoked.returncode == 0, revoked.stderr

        async def refused() -> bool:
            try:
                await aggregate.stub.GetArea(request, timeout=1.0)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc.details()
                assert reader in (exc.details() or "")
                return True
            return False

        await poll_until(refused, "the revoked reader refused", within_s=max(0.0, revoked_at + 1.0 - loop.time()))
        assert loop.time() - revoked_at < 1.0
    finally:
        await aggregate.close()
    log = await db.fetch("SELECT actor, action, subject FROM aggregate.admin_log ORDER BY id")
    assert [(r["action"], r["subject"]) for r in log] == [("service.revoke", reader)]
    assert log[0]["actor"].startswith("cli:")
