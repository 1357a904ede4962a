"""Virtual KPPS devices: one Ed25519 key per sampled TPS, enrolled through tally's admin EnrollDevices RPC.

Keys are generated a run of ENROLL_CHUNK at a time in a thread beside the event loop, and each run is
enrolled as soon as it is ready (one EnrollDevices call, one transaction at tally), `concurrency` runs
in flight on one channel: tally enrolls run i while run i + 1 is being generated. One thread is enough:
the `cryptography` package holds the GIL while it makes a key, so more threads would not make more.
(Deriving keys from the seed with `Ed25519PrivateKey.from_private_bytes` costs the same as generating
them: both are one scalar multiplication, for the public key.)
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import grpc

from suara.client.stubs import tally_stub
from suara.election.signing import DeviceKey
from suara.runtime.auth.admin import bearer_metadata
from suara.runtime.tls import ClientTls, open_channel
from suara.runtime.wire import TALLY_MAX_BATCH
from suara.v1 import tally_pb2

RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}
)
ENROLL_CHUNK = TALLY_MAX_BATCH  # tally's limit per EnrollDevices call; also the run of keys generated at a time


class EnrollError(Exception):
    """A device could not be enrolled for a reason retrying will not fix (a bad admin key, an unknown TPS)."""


@dataclass
class Enrollment:
    keys: dict[str, DeviceKey]
    keygen_s: float  # spent generating keys (beside the enrollment, which overlaps it)
    enroll_s: float  # from the first EnrollDevices call to the last answer
    retries: Counter[str] = field(default_factory=Counter)


def _generate(codes: Sequence[str]) -> list[DeviceKey]:
    return [DeviceKey.generate(tps) for tps in codes]


async def enroll(
    target: str,
    admin_token: str,
    codes: Sequence[str],
    *,
    tls: ClientTls | None = None,
    concurrency: int = 4,
    label: str = "loadtest",
    on_progress: Callable[[int], None] | None = None,
) -> Enrollment:
    loop = asyncio.get_running_loop()
    result = Enrollment({}, 0.0, 0.0)
    metadata = () if tls is not None else bearer_metadata(admin_token)  # under TLS the certificate proves it
    workers = max(1, concurrency)
    ready: asyncio.Queue[list[DeviceKey] | None] = asyncio.Queue()  # runs of keys to enroll; None: no more
    done = 0
    first_call: float | None = None

    async def generate() -> None:
        for start in range(0, len(codes), ENROLL_CHUNK):
            started = time.perf_counter()
            batch = await loop.run_in_executor(None, _generate, codes[start : start + ENROLL_CHUNK])
            result.keygen_s += time.perf_counter() - started
            result.keys.update((k.tps, k) for k in batch)
            ready.put_nowait(batch)
        for _ in range(workers):
            ready.put_nowait(None)

    async with open_channel(target, tls) as channel:
        stub = tally_stub(channel)

        async def worker() -> None:
            nonlocal done, first_call
            while (chunk := await ready.get()) is not None:  # each run of keys is taken by exactly one worker
                if first_call is None:
                    first_call = time.perf_counter()
                Request = tally_pb2.EnrollDeviceRequest
                devices = [Request(tps=k.tps, public_key=k.public_key, label=label) for k in chunk]
                request = tally_pb2.EnrollDevicesRequest(devices=devices)
                delay = 0.05
                while True:
                    try:
                        reply = await stub.EnrollDevices(request, metadata=metadata, timeout=60)
                        break
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() not in RETRYABLE:
                            raise EnrollError(f"enrolling devices for TPS {chunk[0].tps}…{chunk[-1].tps}: "
                                              f"{exc.code().name}: {exc.details()}") from None  # fmt: skip
                        result.retries[exc.code().name] += 1
                        await asyncio.sleep(delay)  # tally is busy or away: back off; a rerun of a run is a no-op
                        delay = min(delay * 2, 2.0)
                # The reply names the election tally serves: the devices sign it into every form.
                for key, device in zip(chunk, reply.devices, strict=True):
                    result.keys[key.tps] = replace(key, election_id=device.election_id)
                done += len(chunk)
                if on_progress is not None:
                    on_progress(done)

        tasks = [asyncio.create_task(generate()), *(asyncio.create_task(worker()) for _ in range(workers))]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:  # a failed run ends the others (and the key generation) too
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    if first_call is not None:
        result.enroll_s = time.perf_counter() - first_call
    return result
