"""Per-caller rate limits: token buckets in memory, one per key (a device, a peer address), in a bounded LRU.

In memory per process: several tally processes behind one port each keep their own, so a caller's
budget is per process, which is what each process can afford. Bounded: at most `max_keys` buckets; the
least recently seen is forgotten first, which only ever forgives a caller (a forgotten bucket starts
full), never blocks one.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from suara.runtime.errors import ResourceExhausted


class RateLimiter:
    """`rate` tokens a second per key, up to `burst` saved; `take(key, n)` spends n or says how long to wait."""

    def __init__(
        self, rate: float, burst: float, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("a rate limit needs rate > 0, burst >= 1 and max_keys >= 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def take(self, key: str, n: float = 1.0) -> float | None:
        """Spend `n` tokens of `key`'s bucket: None if done, else the seconds until they would be there
        (nothing is spent then). More than `burst` at once is never possible: asked, it waits for a full bucket."""
        now = self._clock()
        tokens, at = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        need = min(n, self.burst)
        if tokens >= need:
            tokens -= need
            wait = None
        else:
            wait = (need - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


def retry_ms(wait_s: float) -> int:
    return max(1, math.ceil(wait_s * 1000))


def peer_address(peer: str) -> str:
    """The caller's address without its port: "ipv4:10.0.0.1:5555" → "ipv4:10.0.0.1", "ipv6:[::1]:80" →
    "ipv6:[::1]"; anything else (a unix socket) as it is."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6") and ":" in rest:
        return f"{kind}:{rest.rsplit(':', 1)[0]}"
    return peer


def bare_ip(address: str) -> str:
    """ "ipv4:10.0.0.1" → "10.0.0.1", "ipv6:[::1]" → "::1" (a peer_address without its kind)."""
    kind, _, rest = address.partition(":")
    return rest.strip("[]") if kind in ("ipv4", "ipv6") else address


class PeerLimitInterceptor(grpc.aio.ServerInterceptor):
    """Every unary call counts against its peer address's bucket; beyond it RESOURCE_EXHAUSTED with the
    wait as retry-after. Peers behind one NAT share a bucket, so its rate is a setting, set generously.

    Behind a proxy (Envoy) every call comes from the proxy's address: for a peer in `trusted`, the
    bucket is the address the proxy appended last to `x-forwarded-for` (the one it saw), so devices
    keep buckets of their own. From any other peer the header is ignored: a caller cannot choose its
    bucket by writing one. `on_refused` is told of each call refused (the service counts it)."""

    def __init__(
        self,
        limiter: RateLimiter,
        setting: str,
        trusted: frozenset[str] = frozenset(),
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        self.limiter = limiter
        self.setting = setting
        self.trusted = trusted
        self.on_refused = on_refused

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        limiter, setting, trusted, on_refused = self.limiter, self.setting, self.trusted, self.on_refused

        async def limited(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            address = peer_address(context.peer())
            if trusted and bare_ip(address) in trusted:
                address = _forwarded_for(context) or address
            wait = limiter.take(address)
            if wait is not None:
                if on_refused is not None:
                    on_refused()
                raise ResourceExhausted(
                    f"too many calls from {address}: at most {limiter.rate:g} a second ({setting}); "
                    "retry after the hint",
                    retry_after_ms=retry_ms(wait),
                )
            return await inner(request, context)  # type: ignore[arg-type]  # aio handlers take aio contexts

        return grpc.unary_unary_rpc_method_handler(
            limited,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _forwarded_for(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The last address in x-forwarded-for: the one the trusted proxy saw the call come from."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-forwarded-for" and isinstance(value, str) and value.strip():
            return "forwarded:" + value.rsplit(",", 1)[-1].strip()
    return None
