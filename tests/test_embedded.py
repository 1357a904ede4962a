"""The embedded PostgreSQL: Unix socket where the path allows, loopback TCP where it does not."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from cli.embedded import EmbeddedPostgres


async def _answers(url: str) -> bool:
    conn = await asyncpg.connect(url)
    try:
        return bool(await conn.fetchval("SELECT true"))
    finally:
        await conn.close()


async def test_short_path_uses_the_unix_socket_and_survives_restart(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pgdata")
    try:
        url = server.start()
        assert "host=" in url and str(tmp_path) in url
        assert await _answers(url)
        server.stop("immediate")  # a crash: the port and URL must stay the same after restart
        assert server.start() == url
        assert await _answers(url)
    finally:
        server.stop("immediate")


async def test_a_deep_checkout_falls_back_to_loopback_tcp(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 40)
    server = EmbeddedPostgres(deep / "pgdata")
    try:
        url = server.start()
        assert url.startswith("postgresql://postgres@127.0.0.1:")
        assert await _answers(url)
    finally:
        server.stop("immediate")
