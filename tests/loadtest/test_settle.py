"""Settling: the load test waits for a publisher that keeps writing snapshots, however long the backlog,
and gives up on one that stopped.

The site here is a directory whose pointer the test writes in the publisher's place (the pointer is the
only file settling reads); the night is an oracle that acknowledged COUNTED forms, all counted.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from loadtest.config import Config
from loadtest.oracle import Oracle
from loadtest.settle import settle
from loadtest.site import open_site

COUNTED = 40


def _config(site: Path, timeout_s: float) -> Config:
    return Config(
        target="unused:0",
        admin_token="unused",
        site=str(site),
        sample_interval_s=0.01,
        settle_s=0.05,
        settle_timeout_s=timeout_s,
    )


def _night() -> Oracle:
    oracle = Oracle()
    for n in range(COUNTED):
        oracle.acknowledge(f"3101011001{n:03d}", "ppwp", 1, "ok")
    return oracle


def _point(site: Path, snapshot: int, progres: int) -> None:
    pointer = {
        "snapshot": snapshot,
        "aggregate_sequence": COUNTED,
        "caught_up": progres == COUNTED,
        "contests": {"ppwp": {"progres": progres}},
    }
    tmp = site / "suara" / "snapshot.json.tmp"
    tmp.write_text(json.dumps(pointer))
    tmp.replace(site / "suara" / "snapshot.json")


class _Lines:
    def __init__(self) -> None:
        self.seen: list[tuple[int, int | None]] = []

    def update(self, done: int, total: int | None = None, note: str = "") -> None:
        self.seen.append((done, total))

    def done(self, message: str = "") -> None:
        pass


async def test_a_backlog_longer_than_the_timeout_is_waited_for_while_snapshots_keep_coming(tmp_path: Path) -> None:
    (tmp_path / "suara").mkdir()
    _point(tmp_path, 1, 0)
    cycle_s, timeout_s = 0.03, 0.3

    async def publisher() -> None:
        for n in range(1, COUNTED // 2 + 1):  # 20 cycles of 2 TPS: ~0.6 s, twice the timeout
            await asyncio.sleep(cycle_s)  # a publisher's cycle takes time; that is what is simulated here
            _point(tmp_path, n + 1, 2 * n)

    lines = _Lines()
    started = time.monotonic()
    task = asyncio.create_task(publisher())
    settled = await settle(open_site(tmp_path), _night(), ["ppwp"], _config(tmp_path, timeout_s), lines)
    await task
    assert settled is True
    assert time.monotonic() - started > timeout_s  # it did outlast the timeout, because snapshots kept coming
    assert lines.seen[-1] == (COUNTED, COUNTED)  # the line counted TPS shown up to all of them
    assert all(total == COUNTED for _, total in lines.seen)


async def test_a_publisher_that_stops_writing_snapshots_is_given_up_on(tmp_path: Path) -> None:
    (tmp_path / "suara").mkdir()
    _point(tmp_path, 7, COUNTED - 1)  # one TPS short, and nothing more will come
    timeout_s = 0.2
    started = time.monotonic()
    settled = await settle(open_site(tmp_path), _night(), ["ppwp"], _config(tmp_path, timeout_s))
    assert settled is False
    assert time.monotonic() - started >= timeout_s
