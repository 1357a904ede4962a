"""The devices that may submit to tally: enrolled keys (with a cache in front) and their enrollment."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass

import asyncpg

from services.tally.queries import QUERIES
from suara.runtime.database import Database


@dataclass(frozen=True)
class DeviceRecord:
    device_id: str
    tps: str
    public_key: bytes


class DeviceKeys:
    """Device id → (TPS, public key), looked up in batches and kept in a bounded LRU.

    Lookups batch like group commit: one query in flight at a time, and every
    miss that arrives meanwhile joins the next one, so a burst of first-time
    devices costs a few round trips, not one each. Unknown ids are not cached:
    a device may be enrolled a moment later.
    """

    def __init__(self, db: Database, capacity: int = 200_000) -> None:
        self._db = db
        self._capacity = capacity
        self._cache: OrderedDict[str, DeviceRecord] = OrderedDict()
        self._waiting: dict[str, asyncio.Future[DeviceRecord | None]] = {}
        self._flusher: asyncio.Task[None] | None = None

    def remember(self, record: DeviceRecord) -> None:
        self._cache[record.device_id] = record
        self._cache.move_to_end(record.device_id)
        while len(self._cache) > self._capacity:
            self._cache.popitem(last=False)

    async def get_many(self, device_ids: list[str]) -> dict[str, DeviceRecord]:
        found: dict[str, DeviceRecord] = {}
        futures: dict[str, asyncio.Future[DeviceRecord | None]] = {}
        loop = asyncio.get_running_loop()
        for device_id in device_ids:
            record = self._cache.get(device_id)
            if record is not None:
                found[device_id] = record
                continue
            fut = self._waiting.get(device_id)
            if fut is None:
                fut = loop.create_future()
                self._waiting[device_id] = fut
            futures[device_id] = fut
        if futures and self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_all())
        if futures:
            # asyncio.wait: a caller cancelled (its deadline passed) leaves the lookups that other
            # callers share alone. Every failure is read, so none is logged as never retrieved.
            await asyncio.wait(futures.values())
            errors = [exc for fut in futures.values() if (exc := fut.exception()) is not None]
            if errors:
                raise errors[0]
            for device_id, fut in futures.items():
                if (record := fut.result()) is not None:
                    found[device_id] = record
        return found

    async def _flush_all(self) -> None:
        try:
            while self._waiting:
                waiting, self._waiting = self._waiting, {}
                await self._flush(waiting)
        finally:
            self._flusher = None

    async def _flush(self, waiting: dict[str, asyncio.Future[DeviceRecord | None]]) -> None:
        try:
            rows = await self._db.fetch(QUERIES.device_keys, list(waiting), timeout_s=1.0)
        except Exception as exc:
            for fut in waiting.values():
                if not fut.done():
                    fut.set_exception(exc)
            return
        for row in rows:
            self.remember(DeviceRecord(row["device_id"], row["tps"], bytes(row["public_key"])))
        for device_id, fut in waiting.items():
            if not fut.done():
                fut.set_result(self._cache.get(device_id))


# Live (unrevoked) keys one TPS may have. A TPS runs one or two phones; a lost phone is replaced by
# enrolling a new key (and revoking the old), so a few spare slots and no more: each key is one more
# way in for that TPS, and unbounded enrollment is unbounded state.
MAX_DEVICES_PER_TPS = 5


class EnrolledElsewhere(Exception):
    """Some keys are already enrolled for another TPS: (device id, that TPS) each."""

    def __init__(self, devices: list[tuple[str, str]]) -> None:
        super().__init__(f"{len(devices)} device keys are enrolled for other TPS")
        self.devices = devices


class TooManyDevices(Exception):
    """Enrolling would give some TPS more than MAX_DEVICES_PER_TPS live keys: (TPS, live count it would have) each."""

    def __init__(self, tps: list[tuple[str, int]]) -> None:
        super().__init__(f"{len(tps)} TPS would have more than {MAX_DEVICES_PER_TPS} live device keys")
        self.tps = tps


async def enroll_device(
    conn: asyncpg.Connection | Database, device_id: str, tps: str, public_key: bytes, label: str
) -> None:
    """Enroll one key (again: a no-op). ValueError if it is enrolled for another TPS; TooManyDevices."""
    try:
        await enroll_devices(conn, [device_id], [tps], [public_key], [label])
    except EnrolledElsewhere as exc:
        raise ValueError(f"device {device_id} is already enrolled for TPS {exc.devices[0][1]}") from None


async def enroll_devices(
    db: asyncpg.Connection | Database,
    device_ids: list[str],
    tps: list[str],
    public_keys: list[bytes],
    labels: list[str],
) -> None:
    """Many keys in one transaction: all are enrolled, or none (EnrolledElsewhere, TooManyDevices)."""
    if isinstance(db, Database):
        async with db.acquire() as conn:
            await _enroll(conn, device_ids, tps, public_keys, labels)
    else:
        await _enroll(db, device_ids, tps, public_keys, labels)


async def _enroll(
    conn: asyncpg.Connection, device_ids: list[str], tps: list[str], public_keys: list[bytes], labels: list[str]
) -> None:
    wanted = dict(zip(device_ids, tps, strict=True))
    async with conn.transaction():  # an exception raised inside rolls it back
        await conn.execute(QUERIES.lock_tps_devices, tps)
        rows = await conn.fetch(QUERIES.enroll_devices, device_ids, tps, public_keys, labels)
        clashes = [(r["device_id"], r["tps"]) for r in rows if wanted[r["device_id"]] != r["tps"]]
        if clashes:
            raise EnrolledElsewhere(clashes)
        over = await conn.fetch(QUERIES.tps_over_device_cap, sorted(set(tps)), MAX_DEVICES_PER_TPS)
        if over:
            raise TooManyDevices([(r["tps"], int(r["live"])) for r in over])
