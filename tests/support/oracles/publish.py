"""What the published site must hold, computed in plain Python from the registry and the forms tally
acknowledged — independently of services.publish and services.aggregate: it follows docs/layout.md and
docs/domain.md, and imports nothing of them (its inputs are the registry's tables and the acknowledged
forms as the test built them).

Every file of a contest, whole (only `ts` is checked for its format instead of its value): totals, TPS
files with their photo paths, region lists against the registry's names, status files. It is one of two
site oracles; loadtest/oracle.py computes the same counting rule for another purpose (the numbers of a
running system at any scale, streamed, from the region tree the site itself lists, for forms it can
regenerate from their keys): it checks neither region lists, names, status files nor photos, and takes
no form it did not make itself (these tests send their own protobuf forms, photos included). Hence two.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from suara.v1 import form_pb2

TS = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
ADMIN_TRIPLES = ("pemilih_dpt", "pengguna_dpt", "pengguna_dptb", "pengguna_non_dpt", "pengguna_total")


@dataclass(frozen=True)
class Accepted:
    form: form_pb2.CHasilForm
    quarantined: bool


@dataclass
class Registry:
    names: dict[str, str]  # area code -> name
    tps: list[str]
    choices: dict[str, list[str]]  # contest -> choice ids in nomor_urut order
    scope: dict[str, str]

    @classmethod
    async def read(cls, db: asyncpg.Connection) -> Registry:
        names = {r["code"]: r["name"] for r in await db.fetch("SELECT code, name FROM registry.area")}
        tps = [r["code"] for r in await db.fetch("SELECT code FROM registry.tps ORDER BY code")]
        choices: dict[str, list[str]] = defaultdict(list)
        for r in await db.fetch("SELECT contest, id FROM registry.choice ORDER BY contest, nomor_urut, id"):
            choices[r["contest"]].append(r["id"])
        scope = {r["id"]: r["scope"] for r in await db.fetch("SELECT id, scope FROM registry.contest")}
        return cls(names, tps, dict(choices), scope)


def nest(code: str) -> str:
    return "/".join(code[:n] for n in (2, 4, 6, 10, 13) if n <= len(code))


def ancestors(tps: str) -> list[str]:
    return ["", tps[:2], tps[:4], tps[:6], tps[:10]]


def pct(a: int, b: int) -> float:
    return round(a * 100 / b, 2) if b else 0.0


def administrasi(form: form_pb2.CHasilForm) -> dict[str, int]:
    out = {"suara_sah": form.suara_sah, "suara_tidak_sah": form.suara_tidak_sah, "suara_total": form.suara_total}
    for triple in ADMIN_TRIPLES:
        count = getattr(form, triple)
        out.update({f"{triple}_j": count.j, f"{triple}_l": count.l, f"{triple}_p": count.p})
    return out


def expected_site(
    registry: Registry, contest: str, current: dict[tuple[str, str], Accepted], photo_types: dict[str, str]
) -> dict[str, Any]:
    """path -> expected JSON document, every `ts` replaced by None (checked for format separately)."""
    choices = registry.choices[contest]
    held = [t for t in registry.tps if t.startswith(registry.scope[contest])]
    total: dict[str, int] = defaultdict(int)
    reported: dict[str, int] = defaultdict(int)
    flagged: dict[str, int] = defaultdict(int)
    votes: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(choices, 0))
    children: dict[str, set[str]] = defaultdict(set)
    for t in held:
        chain = [*ancestors(t), t]
        for parent, child in itertools.pairwise(chain):
            children[parent].add(child)
        acc = current.get((t, contest))
        for area in chain:
            total[area] += 1
            if acc is not None and acc.quarantined:
                flagged[area] += 1
            elif acc is not None:
                reported[area] += 1
                for c in choices:
                    votes[area][c] += acc.form.votes[c]

    def row(code: str) -> dict[str, Any]:
        if not reported[code]:
            return {"persen": pct(0, total[code]), "psu": None, "status_progress": False}
        return {**votes[code], "persen": pct(reported[code], total[code]), "psu": None, "status_progress": True}

    docs: dict[str, Any] = {}
    for area in children:
        where = f"{contest}.json" if area == "" else f"{contest}/{nest(area)}.json"
        kids = sorted(children[area])
        docs[f"pemilu/hhcw/{where}"] = {
            "ts": None,
            "psu": None,
            "mode": "hhcw",
            "chart": {**votes[area], "persen": pct(reported[area], total[area])},
            "table": {k: row(k) for k in kids},
            "progres": {"progres": reported[area], "total": total[area]},
        }
        docs[f"wilayah/pemilu/{contest}/{'0.json' if area == '' else nest(area) + '.json'}"] = [
            {
                "nama": registry.names.get(k, f"TPS {k[-3:]}"),
                "id": int(k),
                "kode": k,
                "tingkat": {2: 1, 4: 2, 6: 3, 10: 4, 13: 5}[len(k)],
            }
            for k in kids
        ]
        flags: dict[str, Any] = {}
        for k in kids:
            if flagged[k]:
                flags[k] = {"tps_quarantined": flagged[k]}
                acc = current.get((k, contest))
                if acc is not None and len(k) == 13:
                    flags[k]["failed_checks"] = ...  # present and non-empty; which ones is tally's business
        docs[f"suara/status/{where}"] = {"kode": area, "tps_quarantined": flagged[area], "children": flags}
    for t in held:
        acc = current.get((t, contest))
        path = f"pemilu/hhcw/{contest}/{nest(t)}.json"
        if acc is None:
            docs[path] = {"mode": "hhcw", "chart": None, "images": [None, None, None], "administrasi": None,
                          "psu": None, "ts": None, "status_suara": False, "status_adm": False}  # fmt: skip
            continue
        images: list[str | None] = [
            f"/foto/{sha[:2]}/{sha}.{'png' if photo_types[sha] == 'image/png' else 'jpg'}"
            for sha in acc.form.photo_sha256
        ]
        docs[path] = {
            "mode": "hhcw",
            "chart": {"null": None, **{c: acc.form.votes[c] for c in choices}},
            "images": images + [None] * (3 - len(images)),
            "administrasi": administrasi(acc.form),
            "psu": None,
            "ts": None,
            "status_suara": not acc.quarantined,
            "status_adm": not acc.quarantined,
        }
    return docs


def read_json(site: Path, path: str) -> Any:
    return json.loads((site / path).read_bytes())


def compare(site: Path, expected: dict[str, Any]) -> list[str]:
    """Every difference between the site and the oracle, as readable lines (empty: equal)."""
    problems: list[str] = []
    for path, want in sorted(expected.items()):
        file = site / path
        if not file.exists():
            problems.append(f"{path}: missing")
            continue
        got = json.loads(file.read_bytes())
        if path.startswith("suara/status/"):
            got = {k: got[k] for k in ("kode", "tps_quarantined", "children")}
            for entry in got["children"].values():
                if "failed_checks" in entry:
                    entry["failed_checks"] = ... if entry["failed_checks"] else []
        elif isinstance(got, dict) and "ts" in got:
            if not TS.match(got["ts"]):
                problems.append(f"{path}: ts {got['ts']!r} is not YYYY-MM-DD HH:MM:SS")
            got["ts"] = None
        if got != want:
            problems.append(f"{path}: got {got!r}, want {want!r}")
    return problems
