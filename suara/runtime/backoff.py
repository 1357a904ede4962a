"""Retry pacing shared by every client loop (the relay, publish, the SDK)."""

from __future__ import annotations

import random


class Backoff:
    """Exponential backoff with full jitter: sleep uniform(0, min(cap, base·2ⁿ)); reset on success."""

    def __init__(self, base_s: float, cap_s: float) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.failures = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.base_s * 2 ** min(self.failures, 32))
        self.failures += 1
        return random.uniform(0.0, ceiling)

    def reset(self) -> None:
        self.failures = 0
