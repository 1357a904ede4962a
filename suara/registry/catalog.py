"""The read side of the registry, for the services: contests, and which TPS exist."""

from __future__ import annotations

import operator
import time
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from itertools import islice

import asyncpg

from suara.election.codes import TPS_LENGTH, is_tps_code
from suara.election.contest import Choice, Contest, District
from suara.registry.queries import QUERIES
from suara.runtime.database import Database

_FETCH_ROWS = 50_000  # rows per cursor round trip when reading every TPS


async def fetch_contests(conn: asyncpg.Connection) -> dict[str, Contest]:
    """Every contest by id (in id order), its choices ordered by nomor_urut, its districts by code."""
    choices: dict[str, list[Choice]] = {}
    for r in await conn.fetch(
        "SELECT contest, id, nama, nomor_urut, warna, district, party, region FROM registry.choice"
        " ORDER BY contest, nomor_urut, id"
    ):
        choices.setdefault(r["contest"], []).append(
            Choice(r["id"], r["nama"], r["nomor_urut"], r["warna"], r["district"], r["party"], r["region"])
        )
    areas: dict[tuple[str, str], list[str]] = {}
    for r in await conn.fetch("SELECT contest, district, area FROM registry.district_area ORDER BY contest, area"):
        areas.setdefault((r["contest"], r["district"]), []).append(r["area"])
    districts: dict[str, list[District]] = {}
    for r in await conn.fetch("SELECT contest, code, name, seats FROM registry.district ORDER BY contest, code"):
        found = District(r["code"], r["name"], r["seats"], tuple(areas.get((r["contest"], r["code"]), ())))
        districts.setdefault(r["contest"], []).append(found)
    rows = await conn.fetch("SELECT id, name, scope, max_voters_per_tps, kind FROM registry.contest ORDER BY id")
    return {
        r["id"]: Contest(
            r["id"],
            r["name"],
            r["scope"],
            r["max_voters_per_tps"],
            tuple(choices.get(r["id"], ())),
            tuple(districts.get(r["id"], ())),
            r["kind"],
        )
        for r in rows
    }


class TpsIndex:
    """The TPS codes that exist, with their DPT, in about 10 bytes per TPS.

    Two parallel arrays sorted by code (as an integer: 13 digits fit in 64
    bits), searched by bisection: 823k TPS take 8 MB, where a dict of str
    would take ~100 MB. Immutable: reload it after `suara registry load`.
    """

    __slots__ = ("_codes", "_dpt")

    def __init__(self, codes: array[int], dpt: array[int]) -> None:
        """`codes` ('q') strictly increasing, `dpt` ('H') the DPT of each."""
        if codes.typecode != "q" or dpt.typecode != "H" or len(codes) != len(dpt):
            raise ValueError("TpsIndex needs array('q') codes and array('H') dpt of the same length")
        if not all(map(operator.lt, codes, islice(codes, 1, None))):
            raise ValueError("TpsIndex codes must be strictly increasing")
        self._codes = codes
        self._dpt = dpt

    @classmethod
    def from_items(cls, items: Iterable[tuple[str, int]]) -> TpsIndex:
        """From (code, dpt) pairs in any order; codes must be 13 digits and distinct."""
        pairs = sorted((_parse(code), dpt) for code, dpt in items)
        return cls(array("q", [c for c, _ in pairs]), array("H", [d for _, d in pairs]))

    def _find(self, code: object) -> int | None:
        key = _key(code)
        if key is None:
            return None
        i = bisect_left(self._codes, key)
        return i if i < len(self._codes) and self._codes[i] == key else None

    def __contains__(self, code: object) -> bool:
        return self._find(code) is not None

    def dpt(self, code: str) -> int | None:
        i = self._find(code)
        return None if i is None else self._dpt[i]

    def __len__(self) -> int:
        return len(self._codes)

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays' items."""
        return len(self._codes) * self._codes.itemsize + len(self._dpt) * self._dpt.itemsize


def _key(code: object) -> int | None:
    return int(code) if isinstance(code, str) and is_tps_code(code) else None


def _parse(code: str) -> int:
    key = _key(code)
    if key is None:
        raise ValueError(f"not a TPS code ({TPS_LENGTH} digits): {code!r}")
    return key


async def fetch_tps_index(conn: asyncpg.Connection) -> TpsIndex:
    """Every TPS, read in chunks through a cursor so no row objects pile up (~0.7 s for 823k)."""
    codes: array[int] = array("q")
    dpt: array[int] = array("H")
    async with conn.transaction():  # a cursor lives in a transaction; one query, so one snapshot
        # Ordered as integers, whatever the database's collation.
        cursor = await conn.cursor("SELECT code::bigint, dpt FROM registry.tps ORDER BY 1")
        while rows := await cursor.fetch(_FETCH_ROWS):
            codes.extend(r[0] for r in rows)
            dpt.extend(r[1] for r in rows)
    return TpsIndex(codes, dpt)


async def fetch_election_id(conn: asyncpg.Connection) -> str:
    """The newest registry load's election id ("" if no load named one)."""
    return str(await conn.fetchval(QUERIES.election_id) or "")


async def fetch_election(conn: asyncpg.Connection) -> tuple[str, bool]:
    """The newest registry load's election id ("" if no load named one) and whether it is a rehearsal."""
    row = await conn.fetchrow(QUERIES.election)
    return ("", False) if row is None else (str(row["election_id"]), bool(row["rehearsal"]))


async def tps_exists(conn: asyncpg.Connection, code: str) -> int | None:
    """The DPT of TPS `code`, or None if there is no such TPS: for a TpsIndex miss."""
    if _key(code) is None:
        return None
    dpt: int | None = await conn.fetchval("SELECT dpt FROM registry.tps WHERE code = $1", code)
    return dpt


class RegistryView:
    """The registry as a service holds it: contests and the set of TPS in memory, read once at start.

    A miss goes back to the database once, since the operator may have reloaded the registry
    after the service started: an unknown TPS code is looked up, and an unknown contest makes
    the contests be read again (at most every CONTEST_REFRESH_S).
    """

    CONTEST_REFRESH_S = 10.0

    def __init__(self, db: Database, contests: dict[str, Contest], tps: TpsIndex, election_id: str = "") -> None:
        self._db = db
        self.contests = contests
        self.tps = tps
        self.election_id = election_id  # "" before a load named one (a registry loaded before elections had ids)
        self._contests_loaded = time.monotonic()
        self._election_loaded = time.monotonic()

    @classmethod
    async def load(cls, db: Database) -> RegistryView:
        async with db.acquire() as conn:
            election = await fetch_election_id(conn)
            return cls(db, await fetch_contests(conn), await fetch_tps_index(conn), election)

    async def election(self, claimed: str) -> str:
        """The election this registry is for; re-read (at most every CONTEST_REFRESH_S) when a signed
        document claims another, since the operator may have loaded the registry again meanwhile."""
        if claimed != self.election_id and time.monotonic() - self._election_loaded > self.CONTEST_REFRESH_S:
            async with self._db.acquire() as conn:
                self.election_id = await fetch_election_id(conn)
            self._election_loaded = time.monotonic()
        return self.election_id

    async def contest(self, contest_id: str) -> Contest | None:
        found = self.contests.get(contest_id)
        if found is None and time.monotonic() - self._contests_loaded > self.CONTEST_REFRESH_S:
            async with self._db.acquire() as conn:
                self.contests = await fetch_contests(conn)
            self._contests_loaded = time.monotonic()
            found = self.contests.get(contest_id)
        return found

    async def tps_known(self, code: str) -> bool:
        if code in self.tps:
            return True
        if not is_tps_code(code):
            return False
        async with self._db.acquire() as conn:
            return await tps_exists(conn, code) is not None

    async def tps_dpt(self, code: str) -> int | None:
        """The registered DPT of TPS `code`, or None if the registry has no such TPS."""
        dpt = self.tps.dpt(code)
        if dpt is not None or not is_tps_code(code):
            return dpt
        async with self._db.acquire() as conn:
            return await tps_exists(conn, code)

    def choice_ids(self, contest: str) -> list[str]:
        """The choices in registry order (nomor_urut, id): the order of every votes array."""
        return [c.id for c in self.contests[contest].choices]
