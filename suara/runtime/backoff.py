"""Retry pacing shared by every client loop (the relay, publish, the supervisor, the SDK)."""

from __future__ import annotations

import random


class Backoff:
    """Exponential backoff with full jitter: sleep uniform(0, min(cap, base·2ⁿ)); reset on success.

    `rng` draws the jitter: a seeded random.Random makes the delays reproducible (tests, replays).
    """

    def __init__(self, base_s: float, cap_s: float, rng: random.Random | None = None) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.rng = rng or random.Random()
        self.failures = 0

    def ceiling(self) -> float:
        """The most the next delay may be."""
        return min(self.cap_s, self.base_s * 2.0 ** min(self.failures, 32))

    def next_delay(self) -> float:
        ceiling = self.ceiling()
        self.failures += 1
        return self.rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        self.failures = 0
