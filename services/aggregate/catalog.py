"""The registry as aggregate needs it: contests with their choice order, and which TPS exist."""

from __future__ import annotations

import asyncpg

from suara.election.contest import Contest
from suara.registry.catalog import TpsIndex, fetch_contests, fetch_tps_index, tps_exists


class Catalog:
    """Read once at start (the registry is reference data loaded before the election)."""

    def __init__(self, pool: asyncpg.Pool, contests: dict[str, Contest], tps: TpsIndex) -> None:
        self._pool = pool
        self.contests = contests
        self.tps = tps

    @classmethod
    async def load(cls, pool: asyncpg.Pool) -> Catalog:
        async with pool.acquire() as conn:
            return cls(pool, await fetch_contests(conn), await fetch_tps_index(conn))

    async def tps_known(self, code: str) -> bool:
        if code in self.tps:
            return True
        if len(code) != 13 or not code.isdigit():
            return False
        async with self._pool.acquire() as conn:  # a TPS added by a registry load after we started
            return await tps_exists(conn, code) is not None

    def choice_ids(self, contest: str) -> list[str]:
        """The choices in the order of every votes array (registry order: nomor_urut, id)."""
        return [c.id for c in self.contests[contest].choices]
