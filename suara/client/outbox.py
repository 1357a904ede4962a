"""The device's outbox: every signed form is durably on disk before the first network attempt.

One SQLite file (WAL, synchronous=FULL: a commit survives power loss) holds the
exact signed bytes, the signature, the photos and what the server answered. An
entry is keyed like the server keys a form, (tps, contest, version), so the
outbox refuses locally what tally would refuse as CONFLICT, and resending an
entry is always safe: the bytes never change.

A recap official's outbox (`suara recap`) is the same file holding signed
RecapForms instead, keyed (area, contest, version) as aggregate keys them: the
`tps` and `device_id` columns then hold the area and the official id. A file is
of one kind for good, so a recap is never sent to tally nor a form to aggregate.

sqlite3 blocks, so one worker thread owns the connection and every call hops
to it (`Outbox._run`); the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

from google.protobuf.message import DecodeError

from suara.v1 import aggregate_pb2, form_pb2

State = Literal["pending", "sent", "rejected", "replaced"]
Kind = Literal["form", "recap"]
STATES: tuple[State, ...] = ("pending", "sent", "rejected", "replaced")
# The server stored a different payload under this key: a corrected copy with the
# same version would be refused again, so only a higher version can follow it.
CONFLICT_CODE = "ALREADY_EXISTS"

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entry (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,  -- also the send order: oldest first
    tps             TEXT NOT NULL,
    contest         TEXT NOT NULL,
    version         INTEGER NOT NULL,
    payload         BLOB NOT NULL,                      -- the exact signed bytes, never re-encoded
    signature       BLOB NOT NULL,
    device_id       TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'rejected', 'replaced')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_code       TEXT,
    last_error      TEXT,
    outcome         TEXT,
    submission_id   TEXT,
    payload_sha256  TEXT,
    chain_position  INTEGER,
    chain_hash      TEXT,
    server_time     TEXT,
    failed_checks   TEXT NOT NULL DEFAULT '[]',
    current_version INTEGER,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL
);
-- One live entry per key; a rejected entry replaced by a corrected form stays, as 'replaced'.
CREATE UNIQUE INDEX IF NOT EXISTS entry_key ON entry (tps, contest, version) WHERE state <> 'replaced';
CREATE INDEX IF NOT EXISTS entry_state ON entry (state, id);
CREATE TABLE IF NOT EXISTS photo (
    entry_id INTEGER NOT NULL REFERENCES entry (id),
    position INTEGER NOT NULL,
    content  BLOB NOT NULL,  -- the bytes themselves: the file on the phone may be gone by the time we send
    PRIMARY KEY (entry_id, position)
);
CREATE TABLE IF NOT EXISTS outbox_kind (
    kind TEXT PRIMARY KEY CHECK (kind IN ('form', 'recap'))  -- one row: what the file holds
);
PRAGMA user_version = 1;
"""


class OutboxError(Exception):
    """The root of the outbox's own errors."""


class OutboxConflict(OutboxError):
    """This (tps, contest, version) is already in the outbox with different signed bytes."""

    def __init__(self, existing: Entry) -> None:
        super().__init__(
            f"{existing.describe()} is already in the outbox ({existing.state}) with different content; "
            f"the server would refuse it as a CONFLICT. To correct it, sign it with a higher version "
            f"(version {existing.version + 1} or above)"
        )
        self.existing = existing


class NotAForm(OutboxError):
    """The payload is not a serialized CHasilForm (or RecapForm, in a recap outbox), so it has no key."""


class WrongKind(OutboxError):
    """The file is an outbox of the other kind (recaps opened as forms, or the reverse)."""


@dataclass(frozen=True)
class Receipt:
    """What tally answered for a stored form: where it sits in the tamper-evident chain."""

    submission_id: str
    payload_sha256: str
    chain_position: int
    chain_hash: str
    server_time: str  # RFC 3339, UTC, as the server stamped it


@dataclass(frozen=True)
class Entry:
    id: int
    tps: str
    contest: str
    version: int
    payload: bytes
    signature: bytes
    device_id: str
    photos: tuple[bytes, ...]
    state: State
    attempts: int
    last_code: str | None  # gRPC status name of the last failed attempt, or of the rejection
    last_error: str | None
    outcome: str | None  # ACCEPTED, QUARANTINED, DUPLICATE or SUPERSEDED once sent
    receipt: Receipt | None
    failed_checks: tuple[str, ...]
    current_version: int | None
    created_at: float
    updated_at: float
    kind: Kind = "form"  # a recap's `tps` is its area, its `device_id` the official's id

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.tps, self.contest, self.version)

    def describe(self) -> str:
        return f"{'TPS' if self.kind == 'form' else 'recap of area'} {self.tps} {self.contest} v{self.version}"


@dataclass(frozen=True)
class Status:
    counts: dict[str, int]  # every state, zero included
    oldest_pending: Entry | None
    recent_errors: list[Entry]  # entries with a last error, newest first


Put = Literal["new", "exists", "requeued"]


def key_of(payload: bytes) -> tuple[str, str, int]:
    try:
        form = form_pb2.CHasilForm.FromString(payload)
    except DecodeError as exc:
        raise NotAForm("the payload is not a serialized suara.v1.CHasilForm") from exc
    return (form.tps, form.contest, form.version)


def recap_key_of(payload: bytes) -> tuple[str, str, int]:
    try:
        recap = aggregate_pb2.RecapForm.FromString(payload)
    except DecodeError as exc:
        raise NotAForm("the payload is not a serialized suara.v1.RecapForm") from exc
    return (recap.area, recap.contest, recap.version)


KEYS: dict[Kind, Callable[[bytes], tuple[str, str, int]]] = {"form": key_of, "recap": recap_key_of}


_COLUMNS = (
    "id, tps, contest, version, payload, signature, device_id, state, attempts, last_code, last_error, outcome, "
    "submission_id, payload_sha256, chain_position, chain_hash, server_time, failed_checks, current_version, "
    "created_at, updated_at"
)


def _connect(path: Path, kind: Kind) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Autocommit mode: transactions are the explicit BEGIN IMMEDIATE … COMMIT below.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")  # WAL's default (NORMAL) may lose the last commits on power loss
    conn.execute("PRAGMA foreign_keys = ON")
    conn.executescript(_SCHEMA)
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT kind FROM outbox_kind").fetchone()
        if row is None:  # a new file, or a device's outbox from before recaps: it is what it is first opened as
            conn.execute("INSERT INTO outbox_kind (kind) VALUES (?)", (kind,))
    except BaseException:
        conn.execute("ROLLBACK")
        conn.close()
        raise
    conn.execute("COMMIT")
    if row is not None and row[0] != kind:
        conn.close()
        what = {"form": "a device's outbox of C.Hasil forms", "recap": "a recap official's outbox of recaps"}
        raise WrongKind(f"{path} is {what[row[0]]}, not {what[kind]}")
    return conn


class Outbox:
    """A SQLite outbox. Open with `await Outbox.open(path)`; every method is a coroutine."""

    def __init__(self, path: Path, kind: Kind = "form") -> None:
        self.path = path
        self.kind: Kind = kind
        self._key_of = KEYS[kind]
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="outbox")  # its thread starts with the first call
        self._conn: sqlite3.Connection
        self._closed = False

    @classmethod
    async def open(cls, path: Path, kind: Kind = "form") -> Self:
        outbox = cls(path, kind)
        try:
            outbox._conn = await outbox._run(lambda: _connect(path, kind))
        except BaseException:
            outbox._executor.shutdown(wait=False)
            raise
        return outbox

    async def close(self) -> None:
        """Idempotent: a client may close what a test or a handler already closed."""
        if self._closed:
            return
        self._closed = True
        await self._run(self._conn.close)
        self._executor.shutdown(wait=True)

    async def __aenter__(self) -> Outbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, fn: Callable[[], _T]) -> _T:
        """Run `fn`, which uses the connection, on the outbox's own thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _transaction(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        self._conn.execute("BEGIN IMMEDIATE")  # take the write lock first: no upgrade deadlock with another process
        try:
            result = fn(self._conn)
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")
        return result

    async def put(
        self, payload: bytes, signature: bytes, device_id: str, photos: Sequence[bytes] = ()
    ) -> tuple[Entry, Put]:
        """Store a signed form durably (committed when this returns).

        The same bytes again are a no-op ("exists"), or put a rejected entry back in
        line ("requeued": the officer asked to send it again, e.g. after enrolling).
        Different bytes for a key are refused with OutboxConflict, unless the entry
        was rejected without being stored at the server: then the corrected form
        replaces it ("new") and the old one is kept as 'replaced'.
        """
        tps, contest, version = self._key_of(payload)
        return await self.put_signed((tps, contest, version), lambda _existing: (payload, signature, device_id), photos)

    async def put_signed(
        self,
        key: tuple[str, str, int],
        sign: Callable[[Entry | None], tuple[bytes, bytes, str]],
        photos: Sequence[bytes] = (),
    ) -> tuple[Entry, Put]:
        """`put` of what `sign` returns (payload, signature, device id) given the live entry for `key`, if any.

        One transaction and one trip to the outbox's thread: the signing (which may keep the first
        signing time of an entry already stored) sees the entry as it is when the form is stored.
        """
        tps, contest, version = key
        photos = tuple(photos)

        def put(conn: sqlite3.Connection) -> tuple[Entry, Put]:
            existing = self._live(conn, tps, contest, version)
            payload, signature, device_id = sign(existing)
            if self._key_of(payload) != key:
                raise ValueError(f"signed a {self.kind} for {self._key_of(payload)}, not {key}")
            now = time.time()
            if existing is not None:
                if existing.payload == payload:
                    if existing.state != "rejected":
                        return existing, "exists"
                    conn.execute("UPDATE entry SET state = 'pending', updated_at = ? WHERE id = ?", (now, existing.id))
                    return self._by_id(conn, existing.id), "requeued"
                if existing.state != "rejected" or existing.last_code == CONFLICT_CODE:
                    raise OutboxConflict(existing)
                conn.execute("UPDATE entry SET state = 'replaced', updated_at = ? WHERE id = ?", (now, existing.id))
            cursor = conn.execute(
                "INSERT INTO entry (tps, contest, version, payload, signature, device_id, state, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                (tps, contest, version, payload, signature, device_id, now, now),
            )
            entry_id = cursor.lastrowid
            assert entry_id is not None
            conn.executemany(
                "INSERT INTO photo (entry_id, position, content) VALUES (?, ?, ?)",
                [(entry_id, i, content) for i, content in enumerate(photos)],
            )
            # What was just written, not read back: two queries fewer per form (a tenth of a load
            # generator's outbox time). tests/client pins it to what a read gives.
            return Entry(
                id=entry_id, tps=tps, contest=contest, version=version, payload=payload, signature=signature,
                device_id=device_id, photos=photos, state="pending", attempts=0, last_code=None, last_error=None,
                outcome=None, receipt=None, failed_checks=(), current_version=None, created_at=now, updated_at=now,
                kind=self.kind,
            ), "new"  # fmt: skip

        return await self._run(lambda: self._transaction(put))

    async def get(self, tps: str, contest: str, version: int) -> Entry | None:
        """The live entry for a key (not a replaced one)."""
        return await self._run(lambda: self._live(self._conn, tps, contest, version))

    async def get_by_id(self, entry_id: int) -> Entry:
        return await self._run(lambda: self._by_id(self._conn, entry_id))

    async def pending(self) -> list[Entry]:
        """Pending entries, oldest first."""
        return await self.entries("pending")

    async def entries(self, state: State | None = None) -> list[Entry]:
        def select() -> list[Entry]:
            if state is None:
                rows = self._conn.execute(f"SELECT {_COLUMNS} FROM entry ORDER BY id").fetchall()
            else:
                rows = self._conn.execute(
                    f"SELECT {_COLUMNS} FROM entry WHERE state = ? ORDER BY id", (state,)
                ).fetchall()
            return [self._entry(self._conn, row) for row in rows]

        return await self._run(select)

    async def record_failure(self, entry_id: int, code: str, message: str) -> Entry:
        """One attempt failed in a way worth retrying; the entry stays pending."""
        return await self._update(
            entry_id,
            "attempts = attempts + 1, last_code = ?, last_error = ?",
            (code, message),
        )

    async def mark_sent(
        self,
        entry_id: int,
        outcome: str,
        receipt: Receipt,
        failed_checks: Sequence[str] = (),
        current_version: int | None = None,
    ) -> Entry:
        """The server stored it (or had it already). The first receipt is kept if it is resent later."""
        return await self._update(
            entry_id,
            "attempts = attempts + 1, state = 'sent', last_code = NULL, last_error = NULL, "
            "outcome = CASE WHEN state = 'sent' THEN outcome ELSE ? END, "
            "submission_id = coalesce(submission_id, ?), payload_sha256 = coalesce(payload_sha256, ?), "
            "chain_position = coalesce(chain_position, ?), chain_hash = coalesce(chain_hash, ?), "
            "server_time = coalesce(server_time, ?), failed_checks = ?, current_version = ?",
            (
                outcome,
                receipt.submission_id,
                receipt.payload_sha256,
                receipt.chain_position,
                receipt.chain_hash,
                receipt.server_time,
                json.dumps(list(failed_checks)),
                current_version,
            ),
        )

    async def mark_rejected(self, entry_id: int, code: str, message: str) -> Entry:
        """The server refused it for good; resending the same bytes would be refused again."""
        return await self._update(
            entry_id,
            "attempts = attempts + 1, state = 'rejected', last_code = ?, last_error = ?",
            (code, message),
        )

    async def status(self, recent: int = 5) -> Status:
        def read() -> Status:
            counts: dict[str, int] = dict.fromkeys(STATES, 0)
            for row in self._conn.execute("SELECT state, count(*) FROM entry GROUP BY state"):
                counts[row[0]] = row[1]
            oldest = self._conn.execute(
                f"SELECT {_COLUMNS} FROM entry WHERE state = 'pending' ORDER BY id LIMIT 1"
            ).fetchone()
            errors = self._conn.execute(
                f"SELECT {_COLUMNS} FROM entry WHERE last_error IS NOT NULL AND state IN ('pending', 'rejected') "
                "ORDER BY updated_at DESC, id DESC LIMIT ?",
                (recent,),
            ).fetchall()
            return Status(
                counts,
                None if oldest is None else self._entry(self._conn, oldest),
                [self._entry(self._conn, row) for row in errors],
            )

        return await self._run(read)

    async def _update(self, entry_id: int, assignments: str, params: tuple[Any, ...]) -> Entry:
        def update(conn: sqlite3.Connection) -> Entry:
            row = conn.execute(
                f"UPDATE entry SET {assignments}, updated_at = ? WHERE id = ? RETURNING {_COLUMNS}",
                (*params, time.time(), entry_id),
            ).fetchone()
            if row is None:
                raise KeyError(f"no outbox entry {entry_id}")
            return self._entry(conn, row)

        return await self._run(lambda: self._transaction(update))

    def _live(self, conn: sqlite3.Connection, tps: str, contest: str, version: int) -> Entry | None:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM entry WHERE tps = ? AND contest = ? AND version = ? AND state <> 'replaced'",
            (tps, contest, version),
        ).fetchone()
        return None if row is None else self._entry(conn, row)

    def _by_id(self, conn: sqlite3.Connection, entry_id: int) -> Entry:
        row = conn.execute(f"SELECT {_COLUMNS} FROM entry WHERE id = ?", (entry_id,)).fetchone()
        if row is None:
            raise KeyError(f"no outbox entry {entry_id}")
        return self._entry(conn, row)

    def _entry(self, conn: sqlite3.Connection, row: sqlite3.Row) -> Entry:
        photos = tuple(
            bytes(r[0])
            for r in conn.execute("SELECT content FROM photo WHERE entry_id = ? ORDER BY position", (row["id"],))
        )
        receipt = None
        if row["submission_id"] is not None:
            receipt = Receipt(
                row["submission_id"],
                row["payload_sha256"],
                row["chain_position"],
                row["chain_hash"],
                row["server_time"],
            )
        return Entry(
            id=row["id"],
            tps=row["tps"],
            contest=row["contest"],
            version=row["version"],
            payload=bytes(row["payload"]),
            signature=bytes(row["signature"]),
            device_id=row["device_id"],
            photos=photos,
            state=row["state"],
            attempts=row["attempts"],
            last_code=row["last_code"],
            last_error=row["last_error"],
            outcome=row["outcome"],
            receipt=receipt,
            failed_checks=tuple(json.loads(row["failed_checks"])),
            current_version=row["current_version"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            kind=self.kind,
        )
