"""The devices that may submit to tally: enrolled keys (with a cache in front), their enrollment and
revocation, and the record of who did either."""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import structlog

from services.tally.queries import QUERIES
from suara.runtime.database import Database

log = structlog.stdlib.get_logger("suara.tally.devices")

# Where tally's triggers announce revocations (migration 0004): payload "device:<id>" or "admin:<id>".
REVOKED_CHANNEL: Final = "suara_tally_revoked"
REVOKED_ALARM: Final = "revoked_device"  # tally.alarm's kind for a form a revoked device signed


@dataclass(frozen=True)
class DeviceRecord:
    device_id: str
    tps: str
    public_key: bytes
    revoked: bool = False


class DeviceKeys:
    """Device id → (TPS, public key, revoked), looked up in batches and kept in a bounded LRU.

    Lookups batch like group commit: one query in flight at a time, and every
    miss that arrives meanwhile joins the next one, so a burst of first-time
    devices costs a few round trips, not one each. Unknown ids are not cached:
    a device may be enrolled a moment later. A revocation drops the entry at
    once (`forget`, on its notification); an entry also expires after `ttl_s`,
    so a missed notification cannot keep a revoked key alive for long.
    """

    def __init__(self, db: Database, capacity: int = 200_000, ttl_s: float = 10.0) -> None:
        self._db = db
        self._capacity = capacity
        self._ttl_s = ttl_s
        self._cache: OrderedDict[str, tuple[float, DeviceRecord]] = OrderedDict()
        self._waiting: dict[str, asyncio.Future[DeviceRecord | None]] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._forgotten = 0  # counts forget/clear: a lookup that raced one is answered, not remembered

    def remember(self, record: DeviceRecord) -> None:
        self._cache[record.device_id] = (time.monotonic() + self._ttl_s, record)
        self._cache.move_to_end(record.device_id)
        while len(self._cache) > self._capacity:
            self._cache.popitem(last=False)

    def forget(self, device_id: str) -> None:
        self._cache.pop(device_id, None)
        self._forgotten += 1

    def clear(self) -> None:
        self._cache.clear()
        self._forgotten += 1

    def _cached(self, device_id: str) -> DeviceRecord | None:
        entry = self._cache.get(device_id)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._cache[device_id]
            return None
        return entry[1]

    async def get_many(self, device_ids: list[str]) -> dict[str, DeviceRecord]:
        found: dict[str, DeviceRecord] = {}
        futures: dict[str, asyncio.Future[DeviceRecord | None]] = {}
        loop = asyncio.get_running_loop()
        for device_id in device_ids:
            record = self._cached(device_id)
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
        forgotten = self._forgotten
        try:
            rows = await self._db.fetch(QUERIES.device_keys, list(waiting), timeout_s=1.0)
        except Exception as exc:
            for fut in waiting.values():
                if not fut.done():
                    fut.set_exception(exc)
            return
        records = {
            row["device_id"]: DeviceRecord(row["device_id"], row["tps"], bytes(row["public_key"]), row["revoked"])
            for row in rows
        }
        if forgotten == self._forgotten:  # no revocation came while the database answered
            for record in records.values():
                self.remember(record)
        for device_id, fut in waiting.items():
            if not fut.done():
                fut.set_result(records.get(device_id))

    async def refuse_revoked(self, device: DeviceRecord, tps: str, contest: str, version: int) -> None:
        """The alarm a revoked device's form raises: an error in the log and a row in tally.alarm.

        Called only once the form's signature verified with the revoked key: someone holds that key."""
        log.error(
            REVOKED_ALARM, device_id=device.device_id, enrolled_tps=device.tps, tps=tps, contest=contest,
            version=version, action="a revoked key signed this form: find the phone; see the runbook",
        )  # fmt: skip
        detail = json.dumps({"device_id": device.device_id, "enrolled_tps": device.tps})
        try:
            await self._db.execute(
                QUERIES.insert_alarms, [REVOKED_ALARM], [tps], [contest], [version], [detail], timeout_s=1.0
            )
        except Exception as exc:  # the refusal stands whether or not the alarm row could be written
            log.error("alarm_not_stored", kind=REVOKED_ALARM, device_id=device.device_id, error=str(exc))


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
    conn: asyncpg.Connection | Database,
    device_id: str,
    tps: str,
    public_key: bytes,
    label: str,
    *,
    actor: str | None = None,
) -> None:
    """Enroll one key (again: a no-op). ValueError if it is enrolled for another TPS; TooManyDevices.
    With an `actor`, recorded in tally.admin_log in the same transaction."""
    try:
        await enroll_devices(conn, [device_id], [tps], [public_key], [label], actor=actor)
    except EnrolledElsewhere as exc:
        raise ValueError(f"device {device_id} is already enrolled for TPS {exc.devices[0][1]}") from None


async def enroll_devices(
    db: asyncpg.Connection | Database,
    device_ids: list[str],
    tps: list[str],
    public_keys: list[bytes],
    labels: list[str],
    *,
    actor: str | None = None,
) -> None:
    """Many keys in one transaction: all are enrolled, or none (EnrolledElsewhere, TooManyDevices). With
    an `actor`, one row of tally.admin_log names them all."""
    if isinstance(db, Database):
        async with db.acquire() as conn:
            await _enroll(conn, device_ids, tps, public_keys, labels, actor)
    else:
        await _enroll(db, device_ids, tps, public_keys, labels, actor)


async def _enroll(
    conn: asyncpg.Connection,
    device_ids: list[str],
    tps: list[str],
    public_keys: list[bytes],
    labels: list[str],
    actor: str | None,
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
        if actor is None:
            return
        if len(wanted) == 1:
            await record_admin_action(conn, actor, "device.enroll", device_ids[0], {"tps": tps[0], "label": labels[0]})
        else:
            detail = {"devices": [{"device_id": d, "tps": t} for d, t in wanted.items()]}
            await record_admin_action(conn, actor, "device.enroll", f"{len(wanted)} devices", detail)


async def record_admin_action(
    conn: asyncpg.Connection | Database, actor: str, action: str, subject: str, detail: Mapping[str, Any] | None = None
) -> None:
    """One row of tally.admin_log (append-only): who (`actor`) did `action` to `subject`, now."""
    await conn.fetchrow(QUERIES.record_admin_action, actor, action, subject, json.dumps(dict(detail or {})))


class NotEnrolled(LookupError):
    """No such device, or it is revoked already."""


async def revoke_device(conn: asyncpg.Connection, device_id: str, actor: str, reason: str = "") -> str:
    """Revoke the device's key and record who did; its TPS. Every running tally refuses it within a
    second (the revocation's notification). NotEnrolled when it is unknown or already revoked."""
    async with conn.transaction():
        tps = await conn.fetchval(QUERIES.revoke_device, device_id)
        if tps is None:
            state = await conn.fetchrow(QUERIES.device_state, device_id)
            if state is None:
                raise NotEnrolled(f"no device {device_id!r} is enrolled")
            raise NotEnrolled(f"device {device_id} (TPS {state['tps']}) was revoked already at {state['revoked_at']}")
        await record_admin_action(conn, actor, "device.revoke", device_id, {"tps": tps, "reason": reason})
    return str(tps)
