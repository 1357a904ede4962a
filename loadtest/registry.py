"""The registry as the running system publishes it: contests' choices and their area trees, read from the site.

`wilayah/pemilu/{c}/0.json` lists provinces, each province's list its kabupaten/kota, and so on down to
each desa's list of TPS (tingkat 5). `pemilu/{c}.json` gives the choice ids with their ballot numbers.
Reading it from the site (not the database) is what "the running system" means here: anything the
load test checks later is checked against the tree the public sees.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from loadtest.site import Site, SiteError, read_json
from suara.election.codes import TPS_LENGTH, path_of


def nest(code: str) -> str:
    """`3101012001` → `31/3101/310101/3101012001`, the path of an area below a contest's root."""
    return path_of(code)


def totals_path(contest: str, code: str) -> str:
    return f"pemilu/hhcw/{contest}.json" if code == "" else f"pemilu/hhcw/{contest}/{nest(code)}.json"


def region_path(contest: str, code: str) -> str:
    return f"wilayah/pemilu/{contest}/{'0' if code == '' else nest(code)}.json"


@dataclass(frozen=True)
class ContestRegistry:
    contest: str
    choices: tuple[str, ...]  # in ballot (nomor_urut) order
    children: dict[str, tuple[str, ...]]  # area code ("" for national) -> its children's codes, sorted
    names: dict[str, str] = field(default_factory=dict)  # choice id -> its name (printed on form photos)

    def areas(self) -> Iterator[str]:
        """Every area with a totals file: national down to desa (TPS have TPS files instead)."""
        return iter(self.children)

    def tps(self) -> list[str]:
        return sorted(code for kids in self.children.values() for code in kids if len(code) == TPS_LENGTH)


@dataclass(frozen=True)
class Registry:
    contests: dict[str, ContestRegistry]

    def held(self) -> dict[str, list[str]]:
        """TPS -> the contests held there (in the order given)."""
        out: dict[str, list[str]] = {}
        for contest in self.contests.values():
            for tps in contest.tps():
                out.setdefault(tps, []).append(contest.contest)
        return dict(sorted(out.items()))


async def read_contests_listed(site: Site) -> list[str]:
    """The contests the current snapshot names (the pointer lists them, president first)."""
    pointer = await read_json(site, "suara/snapshot.json")
    if not isinstance(pointer, dict):
        raise SiteError("suara/snapshot.json is missing: publish has not written a first snapshot")
    return list(pointer.get("contests", {}))


async def read_registry(
    site: Site,
    contests: Sequence[str],
    *,
    concurrency: int = 64,
    on_progress: Callable[[int], None] | None = None,
) -> Registry:
    """Every contest's choices and region tree, level by level, `concurrency` files in flight."""
    gate = asyncio.Semaphore(concurrency)
    read = 0

    async def region(contest: str, code: str) -> tuple[str, tuple[str, ...]]:
        nonlocal read
        async with gate:
            items = await read_json(site, region_path(contest, code))
        read += 1
        if on_progress is not None:
            on_progress(read)
        if not isinstance(items, list):
            raise SiteError(f"{region_path(contest, code)} is missing: is {contest!r} a contest of this election?")
        return code, tuple(sorted(str(item["kode"]) for item in items))

    out: dict[str, ContestRegistry] = {}
    for contest in contests:
        candidates = await read_json(site, f"pemilu/{contest}.json")
        if not isinstance(candidates, dict):
            raise SiteError(f"pemilu/{contest}.json is missing: {contest!r} is not a contest of this election")
        choices = tuple(sorted(candidates, key=lambda c: (candidates[c]["nomor_urut"], c)))
        children: dict[str, tuple[str, ...]] = {}
        level = [""]
        while level:
            found = await asyncio.gather(*(region(contest, code) for code in level))
            children.update(found)
            level = [kid for _, kids in found for kid in kids if len(kid) < TPS_LENGTH]
        names = {c: str(candidates[c].get("nama", c)) for c in choices}
        out[contest] = ContestRegistry(contest, choices, children, names)
    return Registry(out)
