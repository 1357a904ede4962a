"""Token buckets against a plain model: what a caller may spend, when, and that memory stays bounded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from suara.runtime.ratelimit import RateLimiter, peer_address


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_full_bucket_then_the_rate_and_the_wait_it_names() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [None, None, None]
    assert limiter.take("a") == 0.5  # one token comes every half second
    assert limiter.take("b") is None  # another key has its own bucket
    clock.now = 0.5
    assert limiter.take("a") is None
    assert limiter.take("a") == 0.5
    clock.now = 100.0  # a long pause saves no more than the burst
    assert [limiter.take("a") for _ in range(4)] == [None, None, None, 0.5]


@given(
    rate=st.floats(0.1, 100.0),
    burst=st.integers(1, 50),
    steps=st.lists(st.tuples(st.floats(0.0, 2.0), st.integers(0, 3)), max_size=60),
)
def test_never_more_than_burst_plus_rate_times_elapsed(rate: float, burst: int, steps: list[tuple[float, int]]) -> None:
    clock = Clock()
    limiter = RateLimiter(rate=rate, burst=burst, clock=clock)
    granted = 0
    for advance, key in steps:
        clock.now += advance
        if key == 0 and limiter.take("k") is None:
            granted += 1
            assert granted <= burst + rate * clock.now + 1e-6


def test_tracked_keys_are_bounded_and_a_forgotten_key_starts_full() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=1, max_keys=100, clock=clock)
    for i in range(1000):
        limiter.take(f"k{i}")
    assert len(limiter) == 100
    assert limiter.take("k0") is None  # forgotten: forgiven, never blocked wrongly
    assert limiter.take("k999") == 1.0


def test_peer_address_drops_the_port() -> None:
    assert peer_address("ipv4:10.0.0.1:5555") == "ipv4:10.0.0.1"
    assert peer_address("ipv6:[::1]:80") == "ipv6:[::1]"
    assert peer_address("unix:/tmp/sock") == "unix:/tmp/sock"
