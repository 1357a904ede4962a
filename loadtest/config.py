"""What a run is asked to do: `Config` (the CLI's options and the knobs tests turn) and the fault profiles."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from loadtest.plan import FAULTS
from suara.runtime.tls import ClientTls

# Per (TPS, contest), except offline (per device). Modest: a few percent of a real night's TPS.
STANDARD: dict[str, float] = {
    "duplicate": 0.03,  # the same signed bytes sent twice → DUPLICATE
    "lost_reply": 0.02,  # the reply is lost, the device resends → DUPLICATE
    "correction": 0.03,  # the officer signs a corrected version+1 → ACCEPTED
    "stale": 0.02,  # an older, never-sent version arrives after a newer one → SUPERSEDED
    "inconsistent": 0.03,  # numbers that do not add up → QUARANTINED, corrected later by version+1
    "malformed": 0.01,  # a negative count → INVALID_ARGUMENT (nothing stored), then the fixed form
    "offline": 0.02,  # forms wait in the device's outbox, flushed when it is back
}
NONE: dict[str, float] = dict.fromkeys(FAULTS, 0.0)
PROFILES = {"standard": STANDARD, "none": NONE}


class ProgressLine(Protocol):
    """What cli.progress.Progress offers: the run reports through it, and knows no terminal."""

    def update(self, done: int, total: int | None = None, note: str = "") -> None: ...

    def done(self, message: str = "") -> None: ...


@dataclass
class Config:
    target: str  # tally's public address: where the devices send
    admin_token: str  # plaintext only: tally's admin bearer token (the CLI reads it from --admin-key)
    site: str
    admin_target: str = ""  # tally's internal address, where the admin enrolls the devices; empty: `target`
    tls: ClientTls | None = None  # the devices' TLS (tally's CA); None: plaintext (SUARA_INSECURE)
    admin_tls: ClientTls | None = None  # the admin's: the CA and the admin's certificate
    scale: float = 1.0
    contests: list[str] | None = None  # None: every contest the site's pointer lists
    # Closed loop: workers; open loop: devices in flight at most (arrivals beyond wait). Election night has
    # thousands of devices sending, and tally's group commit shares a transaction among the callers
    # waiting: too few devices would measure a tally that commits alone.
    concurrency: int = 256
    rate: float | None = None  # arrivals/s (open loop); None: closed loop
    faults: str = "standard"
    seed: int = 2024
    # Share of TPS whose forms carry the three photos of the paper form (loadtest/photos.py): about
    # 0.13 s of CPU and 1 MB per form, so off unless asked for.
    photos: float = 0.0
    enroll_concurrency: int = 4  # EnrollDevices runs of 1,000 in flight
    read_concurrency: int = 64
    sample_interval_s: float = 0.5
    snapshot_timeout_s: float = 300.0
    settle_s: float = 3.0  # the pointer's aggregate_sequence unchanged this long: publish caught up
    settle_timeout_s: float = 900.0  # most seconds without a new snapshot while settling
    recheck_rounds: int = 2
    workdir: Path | None = None  # the outboxes; default a temporary directory on tmpfs
    progress: Callable[[str, int | None], ProgressLine] | None = None  # (label, total) -> a progress line

    def mode(self) -> str:
        return f"open loop, {self.rate:g} arrivals/s mean" if self.rate else f"closed loop, {self.concurrency} workers"

    def progress_line(self, label: str, total: int | None) -> ProgressLine:
        return _Silent() if self.progress is None else self.progress(label, total)


class _Silent:
    def update(self, done: int, total: int | None = None, note: str = "") -> None:
        pass

    def done(self, message: str = "") -> None:
        pass
