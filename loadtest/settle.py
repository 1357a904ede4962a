"""Waiting on publish, which the load test cannot await: its first snapshot, then the site catching up.

Both poll the site's pointer (`suara/snapshot.json`): it is the only sign of publish's progress the
site gives, and the load test reads the system from outside.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from loadtest.config import Config, ProgressLine
from loadtest.errors import LoadTestError
from loadtest.oracle import Oracle
from loadtest.site import Site, read_json


async def wait_for_snapshot(site: Site, timeout_s: float, interval_s: float = 0.5) -> dict[str, Any]:
    """The site's pointer, once publish has written a first snapshot."""
    deadline = time.monotonic() + timeout_s
    while True:
        pointer = await read_json(site, "suara/snapshot.json")
        if isinstance(pointer, dict):
            return pointer
        if time.monotonic() > deadline:
            where = site.describe()
            raise LoadTestError(f"no suara/snapshot.json at {where} after {timeout_s:g} s: is publish running?")
        await asyncio.sleep(interval_s)  # a file on a site: polling is the only way to see it appear


async def settle(
    site: Site, oracle: Oracle, contests: list[str], config: Config, line: ProgressLine | None = None
) -> bool:
    """Until the site shows every counted TPS in a snapshot that says it is caught up (every change
    aggregate had when the cycle ended is in its files), and the pointer's aggregate_sequence stopped
    moving (the relay may still be delivering a correction, which counts no new TPS).

    False once `settle_timeout_s` pass without a new snapshot: a publisher still working through a
    backlog (a whole country's night leaves hundreds of thousands of changes) is waited for, a stalled
    one is not.
    """
    counted = sum(oracle.counted(c) for c in contests)
    last: Any = None
    snapshot: Any = None
    since = progressed = time.monotonic()
    while True:
        pointer = await read_json(site, "suara/snapshot.json") or {}
        now = time.monotonic()
        if pointer.get("aggregate_sequence") != last:
            last, since = pointer.get("aggregate_sequence"), now
        if pointer.get("snapshot") != snapshot:
            snapshot, progressed = pointer.get("snapshot"), now
        shown = pointer.get("contests", {})
        progres = {c: shown.get(c, {}).get("progres") for c in contests}
        if line is not None:
            line.update(
                sum(p for p in progres.values() if isinstance(p, int)),
                counted,
                note=f"snapshot {snapshot}, aggregate change {last}",
            )
        caught_up = pointer.get("caught_up") is True and all(progres[c] == oracle.counted(c) for c in contests)
        if caught_up and now - since >= config.settle_s:
            return True
        if now - progressed > config.settle_timeout_s:
            return False
        await asyncio.sleep(config.sample_interval_s)  # polling the site: publish's progress is not awaitable here
