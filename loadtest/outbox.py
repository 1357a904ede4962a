"""The SDK's outbox with its calls on the event loop, for the load generator's outboxes on tmpfs.

The SDK hops to a thread for every outbox call, so that a phone's event loop never waits on its
disk. On a RAM disk (tmpfs) a commit never waits on a device, and the hop costs more than the
call itself: CPU the load generator would take from the system it measures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from suara.client.outbox import Outbox

_T = TypeVar("_T")


class InlineOutbox(Outbox):
    """An Outbox whose every call runs on the event loop (its thread is never started)."""

    async def _run(self, fn: Callable[[], _T]) -> _T:
        return fn()
