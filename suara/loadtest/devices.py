"""Virtual KPPS devices: one Ed25519 key per sampled TPS, enrolled through tally's admin EnrollDevice RPC.

Key generation runs in a thread pool beside the event loop (OpenSSL releases the GIL); enrollment keeps
`concurrency` RPCs in flight on one channel, since each is a single-row insert at tally and a round trip.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc

from suara.client.stubs import tally_stub
from suara.election.signing import DeviceKey
from suara.v1 import tally_pb2

RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}
)
KEYGEN_CHUNK = 2_000


class EnrollError(Exception):
    """A device could not be enrolled for a reason retrying will not fix (a bad admin key, an unknown TPS)."""


@dataclass
class Enrollment:
    keys: dict[str, DeviceKey]
    keygen_s: float
    enroll_s: float
    retries: Counter[str] = field(default_factory=Counter)


def _generate(codes: Sequence[str]) -> list[DeviceKey]:
    return [DeviceKey.generate(tps) for tps in codes]


async def generate_keys(codes: Sequence[str]) -> dict[str, DeviceKey]:
    loop = asyncio.get_running_loop()
    chunks = [codes[i : i + KEYGEN_CHUNK] for i in range(0, len(codes), KEYGEN_CHUNK)]
    keys: dict[str, DeviceKey] = {}
    for batch in await asyncio.gather(*(loop.run_in_executor(None, _generate, chunk) for chunk in chunks)):
        keys.update((k.tps, k) for k in batch)
    return keys


async def enroll(
    target: str,
    admin_token: str,
    codes: Sequence[str],
    *,
    concurrency: int = 64,
    label: str = "loadtest",
    on_progress: Callable[[int], None] | None = None,
) -> Enrollment:
    started = time.perf_counter()
    keys = await generate_keys(codes)
    keygen_s = time.perf_counter() - started
    result = Enrollment(keys, keygen_s, 0.0)
    metadata = (("authorization", f"Bearer {admin_token}"),)
    done = 0
    started = time.perf_counter()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = tally_stub(channel)
        queue = iter(list(keys.values()))

        async def worker() -> None:
            nonlocal done
            for key in queue:  # one shared iterator: each key is taken by exactly one worker
                request = tally_pb2.EnrollDeviceRequest(tps=key.tps, public_key=key.public_key, label=label)
                delay = 0.05
                while True:
                    try:
                        await stub.EnrollDevice(request, metadata=metadata, timeout=30)
                        break
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() not in RETRYABLE:
                            raise EnrollError(f"enrolling a device for TPS {key.tps}: {exc.code().name}: "
                                              f"{exc.details()}") from None  # fmt: skip
                        result.retries[exc.code().name] += 1
                        await asyncio.sleep(delay)  # tally is busy or away: back off, the key is enrolled later
                        delay = min(delay * 2, 2.0)
                done += 1
                if on_progress is not None:
                    on_progress(done)

        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    result.enroll_s = time.perf_counter() - started
    return result
