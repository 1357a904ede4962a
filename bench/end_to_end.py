"""End to end: `suara up` at a scale, then `suara loadtest` of ppwp with standard faults, verified exact;
the peak RSS of every service process sampled throughout.

`make bench` runs it at scale 1.0 (the whole country, ≈823,000 TPS); `BENCH_QUICK=1` at a small scale.
`python -m bench.end_to_end SCALE` runs it alone. The system and the load test are separate processes,
as in production; the load generator shares the machine's two cores with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

READY = re.compile(r"^ready tally=(\S+) site=(\S+) admin_key=(\S+) ca=(\S*)$")
SAMPLE_S = 0.5
RESULTS = Path(__file__).parent / "results"
SHM = Path("/dev/shm")
# Bytes of site per unit of scale (all contests, ppwp's TPS all reported), with room to spare: files
# under 4 KiB take a page each on tmpfs.
SITE_BYTES_PER_SCALE = 32e9


def _site_parent(scale: float) -> Path | None:
    """Where the site goes: tmpfs when the machine has one and the site fits in half of it, else the disk.

    On ext4 without a journal, creating a file scans past every inode of its block group deleted in
    the last seconds to minutes (`recently_deleted`, fs/ext4/ialloc.c, checked only without a journal).
    Publish replaces files by rename, deleting an inode per file written, so after a few minutes each
    file create costs many times what it costs on tmpfs, in kernel CPU, which is what the whole run is
    short of. The site is derived data (publish rebuilds it from aggregate), so tmpfs is a sound place
    for it; PostgreSQL stays on disk. A whole-country site does not fit in a small machine's tmpfs.
    """
    if not (SHM.is_dir() and os.access(SHM, os.W_OK)):
        return None
    return SHM if scale * SITE_BYTES_PER_SCALE < shutil.disk_usage(SHM).free / 2 else None


def _suara() -> str:
    return str(Path(sys.executable).parent / "suara")


class ProcessSampler:
    """Peak resident memory and CPU seconds per named process, sampled while the run goes on.

    CPU is sampled as a series, so it can be split by the load test's phases afterwards: where the
    cores went during the night is what the throughput is made of. PostgreSQL counts as one process,
    its postmaster with every backend (live ones sampled, exited ones through the postmaster's
    children times); the load generator counts too, since it shares the two cores.
    """

    def __init__(self, pid_file: Path, pgdata: Path) -> None:
        self.pid_file = pid_file
        self.pgdata = pgdata
        self.peak_mb: dict[str, float] = {}
        self.series: list[tuple[float, dict[str, float]]] = []  # (monotonic time, cpu seconds per name)
        self.extra: dict[str, int] = {}  # name -> pid of a process outside `suara up` (the load test)
        self._procs: dict[int, psutil.Process] = {}  # cpu_percent-free: Process objects cached per pid
        self._stop = asyncio.Event()

    def _proc(self, pid: int) -> psutil.Process:
        proc = self._procs.get(pid)
        if proc is None:
            proc = self._procs[pid] = psutil.Process(pid)
        return proc

    def _pids(self) -> dict[str, int]:
        pids: dict[str, int] = dict(self.extra)
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
            state = json.loads(self.pid_file.read_text())  # `suara up`'s up.json
            for service, entries in state["services"].items():
                pids.update({(service if i == 0 else f"{service}-{i + 1}"): e["pid"] for i, e in enumerate(entries)})
            if state["site"]["pid"]:
                pids["site"] = state["site"]["pid"]
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
            pids["postgres"] = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        return pids

    def sample(self) -> None:
        cpu: dict[str, float] = {}
        for name, pid in self._pids().items():
            with contextlib.suppress(psutil.Error):
                proc = self._proc(pid)
                times = proc.cpu_times()
                used = times.user + times.system
                rss = proc.memory_info().rss
                if name == "postgres":
                    used += times.children_user + times.children_system
                    for child in proc.children():
                        with contextlib.suppress(psutil.Error):
                            t = child.cpu_times()
                            used += t.user + t.system
                else:
                    self.peak_mb[name] = round(max(self.peak_mb.get(name, 0.0), rss / 2**20), 1)
                cpu[name] = used
        self.series.append((time.monotonic(), cpu))

    async def run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), SAMPLE_S)
        self.sample()

    def stop(self) -> None:
        self._stop.set()

    def cpu_between(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds each process used from `start` to `end` (monotonic), from the nearest samples."""
        if not self.series:
            return {}
        first = min(self.series, key=lambda s: abs(s[0] - start))[1]
        last = min(self.series, key=lambda s: abs(s[0] - end))[1]
        return {name: round(last[name] - first.get(name, 0.0), 1) for name in last}


async def run(scale: float, *, tally_processes: int = 2) -> dict[str, Any]:
    site_parent = _site_parent(scale)
    with (
        tempfile.TemporaryDirectory(prefix="suara-e2e-") as tmp,
        tempfile.TemporaryDirectory(prefix="suara-e2e-site-", dir=site_parent) as site_tmp,
    ):
        data, site, report_path = Path(tmp) / "data", Path(site_tmp) / "site", Path(tmp) / "report.json"
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        env["SUARA_LOG_LEVEL"] = "warning"
        up = await asyncio.create_subprocess_exec(
            _suara(), "up", "--data-dir", str(data), "--site-dir", str(site), "--http-port", "0",
            "--tally-port", "0", "--scale", str(scale), "--tally-processes", str(tally_processes),
            env=env, stdout=subprocess.PIPE,
        )  # fmt: skip
        assert up.stdout is not None
        started = time.perf_counter()
        line = (await up.stdout.readline()).decode().strip()
        match = READY.match(line)
        if match is None:
            await up.wait()
            raise RuntimeError(f"suara up did not get ready (exit {up.returncode}): {line!r}")
        up_s = time.perf_counter() - started
        tally, _, admin_key, ca = match.groups()
        admin_target = json.loads((data / "up.json").read_text())["services"]["tally"][0]["internal"]
        sampler = ProcessSampler(data / "up.json", data / "pgdata")
        sampling = asyncio.create_task(sampler.run())
        try:
            started = time.perf_counter()
            load_started = time.monotonic()
            load = await asyncio.create_subprocess_exec(
                _suara(), "loadtest", "--target", tally, "--admin-target", admin_target, "--admin-key", admin_key,
                "--ca", ca, "--site", str(site),
                "--contests", "ppwp", "--faults", "standard", "--seed", "1", "--report", str(report_path),
                env=env,
            )  # fmt: skip
            sampler.extra["loadtest"] = load.pid
            code = await load.wait()
            load_s = time.perf_counter() - started
        finally:
            sampler.stop()
            await sampling
            up.send_signal(signal.SIGTERM)
            await up.wait()
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
        if report:  # the load test's whole report beside bench's summary
            RESULTS.mkdir(exist_ok=True)
            (RESULTS / f"end_to_end_{_tag(scale)}.loadtest.json").write_text(json.dumps(report, indent=2) + "\n")
    verification = report.get("verification", {})
    return {
        "end_to_end.scale": scale,
        "end_to_end.up_s": round(up_s, 1),
        "end_to_end.site_dir": str(site_parent or tempfile.gettempdir()),
        f"end_to_end.scale_{_tag(scale)}_minutes": round(load_s / 60, 2),
        "end_to_end.exit_code": code,
        "end_to_end.exact": verification.get("exact"),
        "end_to_end.areas_checked": verification.get("areas_checked"),
        "end_to_end.submissions_per_s": report.get("throughput", {}).get("submissions_per_s"),
        "end_to_end.latency_ms": report.get("latency_ms"),
        "end_to_end.freshness_s": report.get("freshness_s"),
        "end_to_end.submissions": report.get("throughput", {}).get("submissions"),
        # Where the minutes went: publish's first snapshot of the whole country, reading the registry,
        # enrolling, the night, the site catching up, verification.
        "end_to_end.phases_s": report.get("phases_s"),
        "memory.peak_rss_mb": sampler.peak_mb,
        # CPU seconds per process in each phase (the phases follow one another from the load test's start)
        "end_to_end.cpu_s": _cpu_by_phase(sampler, load_started, report.get("phases_s") or {}),
    }


def _cpu_by_phase(sampler: ProcessSampler, start: float, phases: dict[str, float]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in ("first_snapshot", "registry", "devices", "night", "settle", "verify"):
        if name in phases:
            out[name] = sampler.cpu_between(start, start + phases[name])
            start += phases[name]
    return out


def _tag(scale: float) -> str:
    return "1" if scale == 1.0 else str(scale).replace(".", "_")


def main(argv: list[str]) -> int:
    scale = float(argv[0]) if argv else 0.01
    print(json.dumps(asyncio.run(run(scale)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
