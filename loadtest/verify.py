"""Every published totals file of the sampled contests, at every level, and each sampled TPS's, against the oracle;
and the chain heads the site carries, by the very audit of `suara audit site` (signed, growing).

Files are checked as a stream (expected documents are built one at a time, walking each contest's area
tree depth first, and dropped once checked): at scale 1.0 the expectations alone would not fit in
memory. Mismatches are rechecked after a wait, because a file can lag the pointer by one cycle; what
still differs then is reported.

A site directory is checked by `processes` forked processes (forked once the oracle is complete, so they
share it): each takes the next kabupaten/kota subtree (its TPS files, desa … kabupaten totals files),
reads and compares its files with plain blocking reads — no event loop, no thread hop per file — and
hands back its mismatches and the subtree's totals, from which this process checks the provinces and
the national file. A site over HTTP is read here, `concurrency` files in flight.
"""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing
import os
import signal
import traceback
from collections.abc import Callable, Generator, Iterable, Iterator, MutableSequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import Synchronized
from typing import Any

from loadtest.forms import Numbers, numbers
from loadtest.oracle import AreaTotals, Current, File, NumbersOf, Oracle, expected_files, expected_tps
from loadtest.registry import ContestRegistry, totals_path
from loadtest.site import DirSite, Site, SiteError
from suara.site.audit import SiteUnreadable, audit_site

DETAILS = 50  # mismatches reported in full
RECHECK_MAX = 10_000  # more than this many bad files is no lag: report them without waiting
MAX_PROCESSES = 4  # a site directory is checked by this many processes at most (one per usable core)
PROGRESS_EVERY = 512  # files a process checks between updates of its progress counter
POLL_S = 0.2  # how often the processes' progress and results are looked at
READ_CHUNK = 1 << 16  # most published files fit in one read


@dataclass(frozen=True)
class Mismatch:
    path: str
    field: str
    got: Any
    want: Any


@dataclass
class Verification:
    exact: bool = True
    areas_checked: int = 0
    tps_checked: int = 0
    mismatch_count: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)  # the first DETAILS
    chain_heads: int = 0  # validly signed heads the site carries
    chain_problems: list[str] = field(default_factory=list)  # what `suara audit site` finds wrong with them

    def to_json(self) -> dict[str, Any]:
        return {
            "exact": self.exact,
            "areas_checked": self.areas_checked,
            "tps_checked": self.tps_checked,
            "mismatch_count": self.mismatch_count,
            "mismatches": [asdict(m) for m in self.mismatches],
            "chain_heads": self.chain_heads,
            "chain_problems": self.chain_problems,
        }


Expected = tuple[bool, str, dict[str, Any]]  # (a TPS file?, path, the keys the oracle knows and their values)
Bad = tuple[str, dict[str, Any], list[Mismatch]]  # (path, what was expected, how the file differs)


@dataclass
class Findings:
    """What checking some files found; findings of several processes merge."""

    areas: int = 0
    tps: int = 0
    bad: list[Bad] = field(default_factory=list)  # the first RECHECK_MAX + 1 bad files (more are not rechecked)
    overflow: int = 0  # the mismatches of bad files beyond those

    def count(self, tps_file: bool) -> None:
        if tps_file:
            self.tps += 1
        else:
            self.areas += 1

    def add(self, bad: Bad) -> None:
        if len(self.bad) <= RECHECK_MAX:
            self.bad.append(bad)
        else:
            self.overflow += len(bad[2])

    def merge(self, other: Findings) -> None:
        self.areas += other.areas
        self.tps += other.tps
        self.overflow += other.overflow
        for bad in other.bad:
            self.add(bad)


def _diff(path: str, got: Any, want: dict[str, Any]) -> list[Mismatch]:
    if got is None:
        return [Mismatch(path, "file", None, "present")]
    if not isinstance(got, dict):
        return [Mismatch(path, "file", type(got).__name__, "a JSON object")]
    out: list[Mismatch] = []
    for key, value in want.items():
        have = got.get(key)
        if have == value:
            continue
        if isinstance(value, dict) and isinstance(have, dict):  # name the row or choice that differs
            for sub in sorted(set(value) | set(have)):
                if have.get(sub) != value.get(sub):
                    out.append(Mismatch(path, f"{key}.{sub}", have.get(sub), value.get(sub)))
        else:
            out.append(Mismatch(path, key, have, value))
    return out


def _parse(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return "not JSON"


def _numbers_of(registry: ContestRegistry, seed: int) -> NumbersOf:
    contest, choices = registry.contest, registry.choices

    def signed(tps: str, form: Current) -> Numbers:
        return numbers(seed, tps, contest, form.version, form.variant, choices)

    return signed


@dataclass(frozen=True)
class Plan:
    """What to check, split into subtrees any process can take, and what is left for this one."""

    registries: list[ContestRegistry]
    current: dict[tuple[str, str], Current]
    seed: int
    sampled: list[set[str]]  # per registry: its sampled TPS
    units: list[tuple[int, str]]  # (registry index, area or TPS code): the kabupaten/kota subtrees
    outside: list[list[str]]  # per registry: sampled TPS not in its area tree (checked here, as a list)

    @classmethod
    def make(
        cls, registries: Iterable[ContestRegistry], oracle: Oracle, seed: int, sampled: dict[str, list[str]]
    ) -> Plan:
        regs = list(registries)
        units: list[tuple[int, str]] = []
        outside: list[list[str]] = []
        for i, r in enumerate(regs):
            for top in r.children.get("", ()):
                units.extend((i, kid) for kid in r.children.get(top, (top,)))
            in_tree = {kid for kids in r.children.values() for kid in kids}
            outside.append([tps for tps in sampled.get(r.contest, []) if tps not in in_tree])
        return cls(regs, oracle.current, seed, [set(sampled.get(r.contest, [])) for r in regs], units, outside)

    def unit_files(self, unit: int) -> Generator[File, None, AreaTotals]:
        """A unit's files; its totals are the generator's return value."""
        i, code = self.units[unit]
        r = self.registries[i]
        return expected_files(r, code, self.current, _numbers_of(r, self.seed), self.sampled[i])

    def rest(self, known: dict[tuple[int, str], AreaTotals] | None) -> Iterator[Expected]:
        """Every file the units leave (provinces, national, TPS outside the tree); all of them when `known`
        is None (no units were checked apart)."""
        for i, r in enumerate(self.registries):
            mine = None if known is None else {code: t for (j, code), t in known.items() if j == i}
            numbers_of = _numbers_of(r, self.seed)
            for tps_file, code, want in expected_files(r, "", self.current, numbers_of, self.sampled[i], mine):
                yield tps_file, totals_path(r.contest, code), want
            for tps in self.outside[i]:
                form = self.current.get((tps, r.contest))
                signed = None if form is None else numbers_of(tps, form)
                yield True, totals_path(r.contest, tps), expected_tps(r.choices, form, signed)


def _read_file(path: str) -> bytes | None:
    """The file's bytes, None when it does not exist: raw reads until EOF (`open()` costs twice the
    system calls, and in a VM a system call is most of the cost of reading a small file)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, READ_CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def check_units(
    root: str, plan: Plan, take: Callable[[], int], progress: MutableSequence[int], slot: int
) -> tuple[Findings, dict[tuple[int, str], AreaTotals]]:
    """Check units from a site directory until `take` returns none left (a unit index past the end).

    Plain blocking reads: this runs in a process (or a thread) of its own.
    """
    findings = Findings()
    sums: dict[tuple[int, str], AreaTotals] = {}
    prefix = root.rstrip("/") + "/"
    done = 0
    while (unit := take()) < len(plan.units):
        contest = plan.registries[plan.units[unit][0]].contest
        files = plan.unit_files(unit)
        while True:
            try:
                tps_file, code, want = next(files)
            except StopIteration as stop:
                sums[plan.units[unit]] = stop.value
                break
            path = totals_path(contest, code)
            data = _read_file(prefix + path)
            problems = _diff(path, None if data is None else _parse(data), want)
            if problems:
                findings.add((path, want, problems))
            findings.count(tps_file)
            done += 1
            if not done % PROGRESS_EVERY:
                progress[slot] = done
    progress[slot] = done
    return findings, sums


def _child(
    root: str, plan: Plan, counter: Synchronized[int], progress: MutableSequence[int], slot: int, out: Connection
) -> None:
    """A forked process: check units, send back (findings, sums) or the error."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles ^C (and ends this process)
    signal.set_wakeup_fd(-1)  # a signal here must not wake the parent's event loop
    gc.freeze()  # the inherited heap (the oracle…) is never collected here: no scans, no copy-on-write of it

    def take() -> int:
        with counter.get_lock():
            unit = counter.value
            counter.value = unit + 1
        return unit

    try:
        out.send(("ok", check_units(root, plan, take, progress, slot)))
    except BaseException:  # whatever it was, the parent reports it
        out.send(("error", traceback.format_exc()))
    finally:
        out.close()


async def _check_forked(
    root: str, plan: Plan, processes: int, on_progress: Callable[[int], None]
) -> tuple[Findings, dict[tuple[int, str], AreaTotals]]:
    # Forked, the children share the oracle built so far, unpickled. They never touch gRPC: grpc's fork
    # handlers may log "Other threads are currently calling into gRPC, skipping fork() handlers", harmless.
    ctx = multiprocessing.get_context("fork")
    counter = ctx.Value("q", 0)
    progress = ctx.RawArray("q", processes)
    children: list[tuple[BaseProcess, Connection]] = []
    pending: dict[int, tuple[BaseProcess, Connection]] = {}
    findings, sums = Findings(), {}
    try:
        for slot in range(processes):
            receive, send = ctx.Pipe(duplex=False)
            child: BaseProcess = ctx.Process(
                target=_child, args=(root, plan, counter, progress, slot, send), name=f"verify-{slot}", daemon=True
            )
            child.start()
            send.close()  # the child's end: EOF here once the child is gone
            children.append((child, receive))
        pending.update(enumerate(children))
        while pending:
            await asyncio.sleep(POLL_S)  # the children report through a pipe and a shared counter: poll both
            on_progress(sum(progress))
            for slot, (child, receive) in list(pending.items()):
                if not receive.poll():
                    continue
                try:
                    status, result = receive.recv()
                except EOFError:
                    child.join(5)
                    raise SiteError(f"the verifying process {child.name} died (exit {child.exitcode})") from None
                if status != "ok":
                    raise SiteError(f"the verifying process {child.name} failed:\n{result}")
                part, part_sums = result
                findings.merge(part)
                sums.update(part_sums)
                del pending[slot]
        return findings, sums
    finally:
        for slot, (child, receive) in enumerate(children):
            receive.close()
            if slot in pending:  # a failure or a cancellation: the others need not finish
                child.terminate()
            child.join(5)
            if child.is_alive():
                child.kill()
                child.join()


async def _check_in_thread(
    root: str, plan: Plan, on_progress: Callable[[int], None]
) -> tuple[Findings, dict[tuple[int, str], AreaTotals]]:
    units = iter(range(len(plan.units) + 1))
    progress = [0]
    task = asyncio.get_running_loop().run_in_executor(None, check_units, root, plan, units.__next__, progress, 0)
    while not task.done():
        await asyncio.wait([task], timeout=POLL_S)
        on_progress(progress[0])
    return await task


class Checker:
    """Reads through a `Site` (any), `concurrency` files in flight: for a site over HTTP, and the few files
    left over when a site directory was checked by processes."""

    def __init__(self, site: Site, concurrency: int, on_progress: Callable[[int], None] | None = None) -> None:
        self.site = site
        self.concurrency = concurrency
        self.on_progress = on_progress
        self.findings = Findings()
        self.checked = 0

    async def check(self, expectations: Iterator[Expected]) -> None:
        """Read and compare every expected file."""

        async def worker() -> None:
            for tps_file, path, want in expectations:  # one shared iterator across workers: each file once
                data = await self.site.read(path)
                problems = _diff(path, None if data is None else _parse(data), want)
                if problems:
                    self.findings.add((path, want, problems))
                self.findings.count(tps_file)
                self.checked += 1
                if self.on_progress is not None:
                    self.on_progress(self.checked)

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))


async def recheck(site: Site, bad: list[Bad]) -> list[Bad]:
    """Read the mismatching files again; what still differs."""
    out: list[Bad] = []
    for path, want, _ in bad:
        data = await site.read(path)
        problems = _diff(path, None if data is None else _parse(data), want)
        if problems:
            out.append((path, want, problems))
    return out


async def audit_chain(site: Site) -> tuple[int, list[str]]:
    """The signed heads `suara audit site` finds on the site (read through `site`, as every other file here),
    and what is wrong with them."""
    loop = asyncio.get_running_loop()

    def read(path: str) -> object:  # on the audit's thread; the read itself on the event loop
        data = asyncio.run_coroutine_threadsafe(site.read(path), loop).result()
        try:
            return None if data is None else json.loads(data)
        except ValueError as exc:
            raise SiteUnreadable(f"{site.describe()}/{path}: {exc}") from exc

    try:
        report = await asyncio.to_thread(audit_site, read)
    except (SiteUnreadable, SiteError) as exc:
        return 0, [f"cannot read the site: {exc}"]
    return len(report.heads), report.problems


def default_processes() -> int:
    return max(1, min(MAX_PROCESSES, len(os.sched_getaffinity(0))))


async def verify(
    site: Site,
    registries: Iterable[ContestRegistry],
    oracle: Oracle,
    seed: int,
    sampled: dict[str, list[str]],  # contest -> sampled TPS where it is held
    *,
    concurrency: int = 32,
    recheck_rounds: int = 2,
    recheck_wait_s: float = 2.0,
    on_progress: Callable[[int], None] | None = None,
    processes: int | None = None,  # a site directory: forked processes (None: one per usable core); 1: a thread
) -> Verification:
    plan = Plan.make(registries, oracle, seed, sampled)
    processes = default_processes() if processes is None else processes
    apart = 0  # files checked by the processes (or the thread)

    def progress(n: int) -> None:
        nonlocal apart
        apart = n
        if on_progress is not None:
            on_progress(n)

    def progress_here(n: int) -> None:
        if on_progress is not None:
            on_progress(apart + n)

    checker = Checker(site, concurrency, progress_here)
    found, sums = Findings(), None
    if isinstance(site, DirSite) and plan.units:
        root = str(site.root)
        if processes > 1:
            found, sums = await _check_forked(root, plan, processes, progress)
        else:
            found, sums = await _check_in_thread(root, plan, progress)
    await checker.check(plan.rest(sums))
    found.merge(checker.findings)
    bad = found.bad
    for _ in range(recheck_rounds):
        if not bad or len(bad) > RECHECK_MAX:
            break
        # The publisher may be one cycle behind the pointer we waited for, and a cache in front of the site
        # may hold a copy until its max-age is out.
        await asyncio.sleep(max(recheck_wait_s, site.cache_lag_s(path for path, _, _ in bad)))
        bad = await recheck(site, bad)
    bad.sort(key=lambda b: b[0])
    problems = [m for _, _, ms in bad for m in ms]
    result = Verification(areas_checked=found.areas, tps_checked=found.tps)
    result.mismatch_count = len(problems) + found.overflow  # overflow: more than RECHECK_MAX, none rechecked
    result.mismatches = problems[:DETAILS]
    result.chain_heads, result.chain_problems = await audit_chain(site)
    result.exact = not result.mismatch_count and not result.chain_problems
    return result
