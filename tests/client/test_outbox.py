"""The outbox on its own: durable, keyed like tally keys forms, and never quietly replacing what was signed."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from loadtest.outbox import InlineOutbox
from suara.client.outbox import NotAForm, Outbox, OutboxConflict, Receipt
from suara.election.signing import DeviceKey
from suara.v1 import form_pb2
from tests.support.factories import consistent_form

TPS = "1101012001001"
CHOICES = ["100025", "100026", "100027"]
KEY = DeviceKey.generate(TPS)


def signed(version: int = 1, seed: int = 0) -> tuple[bytes, bytes, str]:
    payload = consistent_form(TPS, "ppwp", CHOICES, version, seed=seed).SerializeToString(deterministic=True)
    return payload, KEY.sign(payload), KEY.device_id


RECEIPT = Receipt("3f1c…", "ab" * 32, 7, "cd" * 32, "2024-02-14T13:00:00Z")


@pytest.fixture(params=[False, True], ids=["thread", "inline"])
def inline(request: pytest.FixtureRequest) -> bool:
    """Every behaviour holds whether the outbox hops to its thread or runs on the event loop (the load
    generator's, on tmpfs)."""
    return bool(request.param)


def _kind(inline: bool) -> type[Outbox]:
    return InlineOutbox if inline else Outbox


async def test_put_is_committed_durably_before_it_returns(tmp_path: Path, inline: bool) -> None:
    path = tmp_path / "nested" / "outbox.sqlite3"
    async with await _kind(inline).open(path) as outbox:
        entry, how = await outbox.put(*signed(), photos=[b"\xff\xd8\xffphoto"])
        # Another connection (another process after a crash) sees it at once.
        with contextlib.closing(sqlite3.connect(path)) as other:
            rows = other.execute("SELECT tps, contest, version, state, payload FROM entry").fetchall()
        assert rows == [(TPS, "ppwp", 1, "pending", entry.payload)]
        assert how == "new" and entry.photos == (b"\xff\xd8\xffphoto",) and entry.attempts == 0
        journal, synchronous = await outbox._run(
            lambda: (
                outbox._conn.execute("PRAGMA journal_mode").fetchone()[0],
                outbox._conn.execute("PRAGMA synchronous").fetchone()[0],
            )
        )
        assert (journal, synchronous) == ("wal", 2)  # 2: FULL, a commit survives power loss


async def test_the_same_form_twice_is_one_entry(tmp_path: Path, inline: bool) -> None:
    async with await _kind(inline).open(tmp_path / "o.sqlite3") as outbox:
        first, _ = await outbox.put(*signed())
        again, how = await outbox.put(*signed())
        assert how == "exists" and again == first
        assert len(await outbox.entries()) == 1


async def test_other_content_for_a_stored_version_is_refused(tmp_path: Path, inline: bool) -> None:
    async with await _kind(inline).open(tmp_path / "o.sqlite3") as outbox:
        first, _ = await outbox.put(*signed(seed=0))
        with pytest.raises(OutboxConflict, match="version 2 or above") as refused:
            await outbox.put(*signed(seed=1))
        assert refused.value.existing == first
        await outbox.mark_sent(first.id, "ACCEPTED", RECEIPT)
        with pytest.raises(OutboxConflict):
            await outbox.put(*signed(seed=1))
        assert [e.payload for e in await outbox.entries()] == [first.payload]


async def test_a_rejected_form_may_be_replaced_unless_tally_holds_another(tmp_path: Path, inline: bool) -> None:
    async with await _kind(inline).open(tmp_path / "o.sqlite3") as outbox:
        malformed, _ = await outbox.put(*signed(version=1, seed=0))
        await outbox.mark_rejected(malformed.id, "INVALID_ARGUMENT", "the form is malformed (votes)")
        fixed, how = await outbox.put(*signed(version=1, seed=1))
        assert how == "new" and fixed.state == "pending"
        assert (await outbox.get_by_id(malformed.id)).state == "replaced"
        assert await outbox.get(TPS, "ppwp", 1) == fixed

        conflicting, _ = await outbox.put(*signed(version=2, seed=0))
        await outbox.mark_rejected(conflicting.id, "ALREADY_EXISTS", "version already stored with a different payload")
        with pytest.raises(OutboxConflict):
            await outbox.put(*signed(version=2, seed=1))
        # The very same bytes again: the officer asks to try once more (e.g. after enrolling).
        requeued, how = await outbox.put(*signed(version=2, seed=0))
        assert how == "requeued" and requeued.state == "pending" and requeued.id == conflicting.id


async def test_pending_is_oldest_first_and_a_receipt_is_kept_once_given(tmp_path: Path, inline: bool) -> None:
    async with await _kind(inline).open(tmp_path / "o.sqlite3") as outbox:
        ids = [(await outbox.put(*signed(version=v)))[0].id for v in (3, 1, 2)]
        assert [e.id for e in await outbox.pending()] == ids
        failed = await outbox.record_failure(ids[0], "UNAVAILABLE", "tally unreachable")
        assert (failed.state, failed.attempts, failed.last_code) == ("pending", 1, "UNAVAILABLE")
        sent = await outbox.mark_sent(ids[0], "ACCEPTED", RECEIPT, ["sum"], 3)
        assert (sent.state, sent.outcome, sent.receipt, sent.attempts) == ("sent", "ACCEPTED", RECEIPT, 2)
        assert sent.last_error is None and sent.failed_checks == ("sum",) and sent.current_version == 3
        # A later resend answered DUPLICATE keeps the first outcome and receipt.
        other = Receipt("other", "00", 9, "ff", "2024-02-15T00:00:00Z")
        resent = await outbox.mark_sent(ids[0], "DUPLICATE", other)
        assert (resent.outcome, resent.receipt) == ("ACCEPTED", RECEIPT)
        assert [e.id for e in await outbox.pending()] == ids[1:]


async def test_status_counts_states_and_shows_the_oldest_pending_and_the_errors(tmp_path: Path, inline: bool) -> None:
    async with await _kind(inline).open(tmp_path / "o.sqlite3") as outbox:
        a, _ = await outbox.put(*signed(version=1))
        b, _ = await outbox.put(*signed(version=2))
        c, _ = await outbox.put(*signed(version=3))
        await outbox.record_failure(a.id, "UNAVAILABLE", "tally unreachable")
        await outbox.mark_rejected(b.id, "PERMISSION_DENIED", "another TPS")
        await outbox.mark_sent(c.id, "ACCEPTED", RECEIPT)
        status = await outbox.status()
    assert status.counts == {"pending": 1, "sent": 1, "rejected": 1, "replaced": 0}
    assert status.oldest_pending is not None and status.oldest_pending.id == a.id
    assert [(e.id, e.last_code) for e in status.recent_errors] == [(b.id, "PERMISSION_DENIED"), (a.id, "UNAVAILABLE")]


async def test_entries_survive_reopening(tmp_path: Path, inline: bool) -> None:
    path = tmp_path / "o.sqlite3"
    async with await _kind(inline).open(path) as outbox:
        entry, _ = await outbox.put(*signed(), photos=[b"a", b"b"])
    async with await _kind(inline).open(path) as reopened:
        assert await reopened.pending() == [entry]


async def test_a_payload_that_is_not_a_form_is_refused(tmp_path: Path, inline: bool) -> None:
    async with await _kind(inline).open(tmp_path / "o.sqlite3") as outbox:
        with pytest.raises(NotAForm):
            await outbox.put(b"\xff\xff\xff", b"sig", "dev_x")
        assert form_pb2.CHasilForm.FromString(signed()[0]).tps == TPS
        assert await outbox.entries() == []


@pytest.mark.parametrize("photos", [(), (b"\xff\xd8\xffone",), (b"\x89PNG\r\n\x1a\nA", b"\xff\xd8\xffB")])
async def test_what_put_and_updates_return_is_what_a_read_gives(
    tmp_path: Path, inline: bool, photos: tuple[bytes, ...]
) -> None:
    """put builds its entry from what it wrote and updates take theirs from RETURNING: both must equal a
    fresh read of the row, or a caller would act on a state the outbox does not hold."""
    async with await _kind(inline).open(tmp_path / "outbox.sqlite3") as outbox:
        entry, how = await outbox.put(*signed(), photos=photos)
        assert how == "new" and entry == await outbox.get_by_id(entry.id)
        failed = await outbox.record_failure(entry.id, "UNAVAILABLE", "tally restarting")
        assert failed == await outbox.get_by_id(entry.id) and failed.attempts == 1
        sent = await outbox.mark_sent(entry.id, "QUARANTINED", RECEIPT, ["suara_sah"], current_version=1)
        assert sent == await outbox.get_by_id(entry.id) and sent.photos == photos
        with pytest.raises(KeyError):
            await outbox.mark_rejected(entry.id + 1, "INVALID_ARGUMENT", "no such entry")
