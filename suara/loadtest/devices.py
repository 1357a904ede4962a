"""Virtual KPPS devices: one Ed25519 key per sampled TPS, enrolled through tally's admin EnrollDevices RPC.

Key generation runs in a thread pool beside the event loop (OpenSSL releases the GIL); enrollment sends
runs of ENROLL_CHUNK keys (one transaction each at tally), `concurrency` runs in flight on one channel.
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
ENROLL_CHUNK = 1_000  # tally's limit per EnrollDevices call


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
    concurrency: int = 4,
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
    everyone = list(keys.values())
    async with grpc.aio.insecure_channel(target) as channel:
        stub = tally_stub(channel)
        runs = iter(range(0, len(everyone), ENROLL_CHUNK))

        async def worker() -> None:
            nonlocal done
            for start in runs:  # one shared iterator: each run of keys is taken by exactly one worker
                chunk = everyone[start : start + ENROLL_CHUNK]
                Request = tally_pb2.EnrollDeviceRequest
                devices = [Request(tps=k.tps, public_key=k.public_key, label=label) for k in chunk]
                request = tally_pb2.EnrollDevicesRequest(devices=devices)
                delay = 0.05
                while True:
                    try:
                        await stub.EnrollDevices(request, metadata=metadata, timeout=60)
                        break
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() not in RETRYABLE:
                            raise EnrollError(f"enrolling devices for TPS {chunk[0].tps}…{chunk[-1].tps}: "
                                              f"{exc.code().name}: {exc.details()}") from None  # fmt: skip
                        result.retries[exc.code().name] += 1
                        await asyncio.sleep(delay)  # tally is busy or away: back off; a rerun of a run is a no-op
                        delay = min(delay * 2, 2.0)
                done += len(chunk)
                if on_progress is not None:
                    on_progress(done)

        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    result.enroll_s = time.perf_counter() - started
    return result
