"""Pemilu 2024 and Pilkada 2024 as suara holds them: every contest with its districts (dapil),
generated reproducibly from the data files of a shape directory (suara/registry/pemilu2024/).

Real district maps and candidate lists are not in a package, so the files hold what is known (the
parties, the DPR seats per district, Jakarta's districts, DPRD seats per province, representations
abroad, Pilkada pairs known by name) and the rest is generated from the seed: how a province or a
kabupaten/kota is cut into districts (contiguous runs of its areas in code order, balanced by
number of desa, a stand-in for population), the candidates and the pairs. The same files, areas
and seed give the same contests.

Every TPS of a contest's reach lies in exactly one of its districts: `check_districts` proves it
of the area tree for every contest before anything is loaded.
"""

from __future__ import annotations

import math
import random
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suara.election.codes import LENGTHS
from suara.election.contest import SEATS, Choice, Contest, District
from suara.registry.areas import Area
from suara.registry.contests import ContestConfigError
from suara.registry.synthetic import Tps

SHAPES = {"pemilu2024": Path(__file__).parent / "pemilu2024"}
ABROAD = "99"  # Sirekap's LUAR NEGERI, beside the 38 provinces
ABROAD_NAME = "LUAR NEGERI"
# Abroad, the desa level holds one group per kind of station; its 4 digits say which.
STATION_KINDS = {"tpsln": ("0001", "TPSLN", 100, 500), "ksk": ("0002", "KSK", 50, 500), "pos": ("0003", "POS", 50, 600)}
_COLOUR = re.compile(r"#[0-9A-Fa-f]{6}")
_PALETTE = ("#1565C0", "#D32F2F", "#2E7D32", "#F9A825", "#6A1B9A", "#00838F", "#EF6C00", "#5D4037")
_ROMAN = ("I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII")
_COMMON = {"name", "max_voters_per_tps"}
_CONTEST_KEYS = {
    "ppwp": _COMMON | {"choices"},
    "pdpr": _COMMON,
    "pdpd": _COMMON | {"min_candidates", "max_candidates"},
    "pdprdp": _COMMON,
    "pdprdk": _COMMON,
    "pkwkp": _COMMON | {"not_held", "pairs", "pair_weights"},
    "pkwkk": _COMMON | {"not_held_in", "pairs", "pair_weights"},
}
# A district's seats are apportioned between these bounds; about this many each.
_DPRD_TARGET_SEATS = 8


@dataclass(frozen=True)
class Shape:
    """A whole election: its contests with their districts, and the areas and stations abroad."""

    contests: tuple[Contest, ...]
    abroad_areas: tuple[Area, ...]
    # (station group's code, kind, how many at scale 1.0), in code order.
    abroad_groups: tuple[tuple[str, str, int], ...]


class _Tree:
    """The area tree's shape: children in code order and desa under each area."""

    def __init__(self, areas: Iterable[Area]) -> None:
        self.names: dict[str, str] = {}
        self.children: dict[str, list[str]] = {}
        self.desa: dict[str, int] = {}
        for a in sorted(areas, key=lambda a: a.code):
            self.names[a.code] = a.name
            if a.parent is not None:
                self.children.setdefault(a.parent, []).append(a.code)
            if a.level == 4:
                for n in LENGTHS[:3]:
                    self.desa[a.code[:n]] = self.desa.get(a.code[:n], 0) + 1
        self.provinces = sorted(c for c in self.names if len(c) == 2)

    def weight(self, code: str) -> int:
        return max(1, self.desa.get(code, 1))


def read_shape(directory: Path, areas: Sequence[Area], seed: int) -> Shape:
    """The election of `directory`'s data files over `areas` (the domestic tree) for `seed`.

    Raises ContestConfigError naming each file and item that is wrong, all at once.
    """
    problems: list[str] = []
    files = {
        name: _read(directory / f"{name}.toml", problems) for name in ("election", "parties", "dpr", "dprd", "abroad")
    }
    if problems:
        raise ContestConfigError("invalid election shape:\n" + "\n".join(f"  {p}" for p in problems))
    tree = _Tree(areas)
    abroad_areas, groups = _abroad(files["abroad"], f"{directory / 'abroad.toml'}", problems)
    known = set(tree.names) | {a.code for a in abroad_areas}
    election = files["election"]
    where = str(directory / "election.toml")
    parties = _parties(files["parties"], str(directory / "parties.toml"), problems)
    contests: list[Contest] = []
    if not problems:
        contests = [
            _ppwp(election, tree, where, problems),
            _pdpr(files["dpr"], election, parties, tree, known, str(directory / "dpr.toml"), seed, problems),
            _pdpd(election, tree, where, seed, problems),
            *_dprd(files["dprd"], election, parties, tree, str(directory / "dprd.toml"), seed, problems),
            *_pilkada(election, tree, where, seed, problems),
        ]
        for c in contests:
            check_districts(c, tree.children, known, problems)
    if problems:
        raise ContestConfigError("invalid election shape:\n" + "\n".join(f"  {p}" for p in problems))
    return Shape(tuple(contests), tuple(abroad_areas), tuple(groups))


def abroad_tps(shape: Shape, *, scale: float, seed: int) -> list[Tps]:
    """The stations abroad for (scale, seed), by code: a smaller scale keeps a prefix of each group's
    numbers (a subset of the scale-1.0 list, with the same DPT), and each representation keeps one."""
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], not {scale}")
    rng = random.Random(f"abroad:{seed}")
    kept: dict[str, int] = {}
    for code, _, count in shape.abroad_groups:
        kept[code] = count if scale == 1 else round(count * scale)
    for rep in {code[:6] for code, _, _ in shape.abroad_groups}:
        mine = [code for code, _, count in shape.abroad_groups if code.startswith(rep) and count]
        if mine and not any(kept[c] for c in mine):
            kept[mine[0]] = 1
    stations: list[Tps] = []
    for code, kind, count in shape.abroad_groups:
        _, _, low, high = STATION_KINDS[kind]
        dpt = [rng.randint(low, high) for _ in range(count)]  # drawn at full scale, so a sample keeps them
        stations.extend(Tps(f"{code}{n:03d}", code, n, dpt[n - 1]) for n in range(1, kept[code] + 1))
    return stations


def check_districts(
    contest: Contest, children: Mapping[str, Sequence[str]], known: set[str], problems: list[str]
) -> None:
    """Seats in the kind's range; district codes and areas exist and appear once; no area inside
    another's; and the areas partition the contest's reach (every TPS under it in exactly one)."""
    where = f"contest {contest.id!r}"
    low, high = SEATS[contest.jenis]
    owner: dict[str, str] = {}
    for d in contest.districts:
        if not low <= d.seats <= high:
            problems.append(
                f"{where} district {d.code} ({d.name}): {d.seats} seats, a {contest.jenis} district has {low}-{high}"
            )
        if not d.areas:
            problems.append(f"{where} district {d.code} ({d.name}): covers no area")
        for area in d.areas:
            if area not in known:
                problems.append(f"{where} district {d.code}: no area with code {area!r}")
            elif area in owner:
                problems.append(f"{where}: area {area} is in districts {owner[area]} and {d.code}")
            owner.setdefault(area, d.code)
    if len({d.code for d in contest.districts}) != len(contest.districts):
        problems.append(f"{where}: a district code is used twice")
    for area, code in owner.items():
        for n in LENGTHS:
            if n < len(area) and (outer := owner.get(area[:n])) is not None:
                problems.append(f"{where}: area {area} of district {code} lies inside {area[:n]} of district {outer}")

    def covered(code: str) -> bool:
        if code in owner:
            return True
        kids = children.get(code, ())
        return bool(kids) and len(code) < LENGTHS[2] and all(covered(k) for k in kids)

    roots = sorted({a[:2] for a in owner})
    for root in roots:
        if not covered(root):
            missing = [k for k in children.get(root, ()) if not covered(k)] or [root]
            problems.append(f"{where}: {', '.join(missing[:5])} of {root} in no district")
    ballots = {d.code: contest.ballot(d.code) for d in contest.districts}
    for code, ballot in ballots.items():
        if not ballot:
            problems.append(f"{where} district {code}: no choices on its ballot")
        numbers = [(c.party, c.nomor_urut) for c in ballot]
        if len(set(numbers)) != len(numbers):
            problems.append(f"{where} district {code}: a nomor_urut is used twice on its ballot")


def _read(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        problems.append(f"{path}: cannot read: {exc}")
        return {}


def _table(data: Mapping[str, Any], key: str, where: str, problems: list[str]) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        problems.append(f"{where}: [{key}] must be a table")
        return {}
    return value


def _int(value: Any, what: str, problems: list[str]) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        problems.append(f"{what} must be an integer, not {value!r}")
        return 0
    return value


def _str(value: Any, what: str, problems: list[str]) -> str:
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{what} must be a non-empty string")
        return ""
    return value


@dataclass(frozen=True)
class _Party:
    choice: Choice
    singkatan: str


def _parties(data: Mapping[str, Any], where: str, problems: list[str]) -> list[_Party]:
    raw = data.get("party")
    if not isinstance(raw, list) or not raw:
        problems.append(f"{where}: `party` must be a non-empty list")
        return []
    parties: list[_Party] = []
    for i, item in enumerate(raw):
        at = f"{where} party #{i + 1}"
        if not isinstance(item, dict):
            problems.append(f"{at}: must be a table")
            continue
        if unknown := set(item) - {"nomor_urut", "singkatan", "warna", "nama", "region"}:
            problems.append(f"{at}: unknown keys {sorted(unknown)}")
        number = _int(item.get("nomor_urut"), f"{at} nomor_urut", problems)
        if not 1 <= number <= 99:
            problems.append(f"{at}: nomor_urut {number} must be between 1 and 99")
        warna = _str(item.get("warna"), f"{at} warna", problems)
        if warna and not _COLOUR.fullmatch(warna):
            problems.append(f"{at}: warna {warna!r} must be a colour like '#1A2B3C'")
        region = item.get("region", "")
        if not isinstance(region, str) or not re.fullmatch(r"([0-9]{2})?", region):
            problems.append(f"{at}: region {region!r} must be '' or a province code")
            region = ""
        choice = Choice(f"p{number:02d}", _str(item.get("nama"), f"{at} nama", problems), number, warna, region=region)
        parties.append(_Party(choice, _str(item.get("singkatan"), f"{at} singkatan", problems)))
    numbers = [p.choice.nomor_urut for p in parties]
    for n in sorted({n for n in numbers if numbers.count(n) > 1}):
        problems.append(f"{where}: nomor_urut {n} used by more than one party")
    return parties


def _contest_table(election: Mapping[str, Any], kind: str, where: str, problems: list[str]) -> tuple[str, int]:
    table = _table(election, kind, where, problems)
    if unknown := set(table) - _CONTEST_KEYS[kind]:
        problems.append(f"{where} [{kind}]: unknown keys {sorted(unknown)}")
    name = _str(table.get("name"), f"{where} [{kind}] name", problems)
    voters = _int(table.get("max_voters_per_tps"), f"{where} [{kind}] max_voters_per_tps", problems)
    if not 1 <= voters <= 600:
        problems.append(f"{where} [{kind}]: max_voters_per_tps must be between 1 and 600, not {voters}")
    return name, voters


def _upper(name: str) -> str:
    return name.upper()


def _ppwp(election: Mapping[str, Any], tree: _Tree, where: str, problems: list[str]) -> Contest:
    name, voters = _contest_table(election, "ppwp", where, problems)
    choices: list[Choice] = []
    for i, item in enumerate(_table(election, "ppwp", where, problems).get("choices") or []):
        at = f"{where} [ppwp] choice #{i + 1}"
        if not isinstance(item, dict):
            problems.append(f"{at}: must be a table")
            continue
        choices.append(
            Choice(
                _str(item.get("id"), f"{at} id", problems),
                _str(item.get("nama"), f"{at} nama", problems),
                _int(item.get("nomor_urut"), f"{at} nomor_urut", problems),
                _str(item.get("warna"), f"{at} warna", problems),
            )
        )
    if not choices:
        problems.append(f"{where} [ppwp]: choices must be a non-empty list")
    nation = District("00", "INDONESIA", 1, (*tree.provinces, ABROAD))
    return Contest("ppwp", name, "", voters, tuple(choices), (nation,), "ppwp")


def _cut(units: list[str], n: int, tree: _Tree) -> list[list[str]]:
    """`units` (codes in order) as `n` contiguous runs balanced by desa; a unit is split into its
    children while there are fewer units than runs, the heaviest first."""
    units = list(units)
    while len(units) < n:
        splittable = [u for u in units if len(tree.children.get(u, ())) > 1 and len(u) < LENGTHS[2]]
        if not splittable:
            raise ValueError(f"cannot cut {units} into {n} districts")
        big = max(splittable, key=tree.weight)
        i = units.index(big)
        units[i : i + 1] = tree.children[big]
    total = sum(tree.weight(u) for u in units)
    runs: list[list[str]] = []
    start, done = 0, 0
    for k in range(n):
        end = start + 1
        if k == n - 1:
            end = len(units)
        else:
            done += tree.weight(units[start])
            target = total * (k + 1) / n
            # Stop at the unit that brings the run closest to its share, leaving one unit per run to come.
            while end < len(units) - (n - k - 1) and abs(done + tree.weight(units[end]) - target) < abs(done - target):
                done += tree.weight(units[end])
                end += 1
        runs.append(units[start:end])
        start = end
    return runs


def _apportion(weights: list[int], seats: int, low: int, high: int) -> list[int]:
    """`seats` over the runs in proportion to `weights` (Sainte-Laguë), each between low and high."""
    given = [low] * len(weights)
    for _ in range(seats - low * len(weights)):
        i = max((i for i in range(len(weights)) if given[i] < high), key=lambda i: weights[i] / (given[i] + 0.5))
        given[i] += 1
    return given


def _candidates(districts: Sequence[District], parties: Sequence[_Party], rng: random.Random) -> list[Choice]:
    """Each party standing in a district puts up to its seats candidates there, most a full list."""
    found: list[Choice] = []
    for d in districts:
        for p in parties:
            if not all(a.startswith(p.choice.region) for a in d.areas):
                continue
            n = d.seats if rng.random() < 0.8 else rng.randint(1, d.seats)
            found.extend(
                Choice(
                    f"{p.choice.id}-{d.code}-{k}",
                    f"CALEG {k} {p.singkatan} {d.name}",
                    k,
                    p.choice.warna,
                    district=d.code,
                    party=p.choice.id,
                )
                for k in range(1, n + 1)
            )
    return found


def _pdpr(
    data: Mapping[str, Any],
    election: Mapping[str, Any],
    parties: Sequence[_Party],
    tree: _Tree,
    known: set[str],
    where: str,
    seed: int,
    problems: list[str],
) -> Contest:
    name, voters = _contest_table(election, "pdpr", where.replace("dpr.toml", "election.toml"), problems)
    seats_by_province = _table(data, "province", where, problems)
    listed: dict[str, list[tuple[int, list[str], str]]] = {}
    for i, item in enumerate(data.get("district") or []):
        at = f"{where} district #{i + 1}"
        if not isinstance(item, dict):
            problems.append(f"{at}: must be a table")
            continue
        if unknown := set(item) - {"province", "seats", "areas", "name"}:
            problems.append(f"{at}: unknown keys {sorted(unknown)}")
        province = item.get("province")
        if province not in tree.names or not isinstance(province, str) or len(province) != 2:
            problems.append(f"{at}: no province with code {province!r}")
            continue
        areas = item.get("areas")
        if not isinstance(areas, list) or not areas or not all(isinstance(a, str) for a in areas):
            problems.append(f"{at}: areas must be a non-empty list of area codes")
            continue
        for a in areas:
            if a not in known:
                problems.append(f"{at}: no area with code {a!r}")
        listed.setdefault(province, []).append(
            (_int(item.get("seats"), f"{at} seats", problems), areas, str(item.get("name", "")))
        )
    for code in sorted(set(seats_by_province) & set(listed)):
        problems.append(f"{where}: province {code} is both in [province] and in [[district]]; give it one way")
    for code in sorted(set(seats_by_province) - set(tree.provinces)):
        problems.append(f"{where} [province]: no province with code {code!r}")
    for code in sorted(set(tree.provinces) - set(seats_by_province) - set(listed)):
        problems.append(f"{where}: province {code} ({tree.names[code]}) has no DPR district")
    districts: list[District] = []
    for province in tree.provinces:
        upper = _upper(tree.names[province])
        plan: list[tuple[int, list[str], str]] = listed.get(province, [])
        if province in seats_by_province:
            raw = seats_by_province[province]
            if not isinstance(raw, list) or not raw or not all(isinstance(s, int) for s in raw):
                problems.append(f"{where} [province] {province}: must be a non-empty list of seats per district")
                continue
            try:
                runs = _cut(tree.children.get(province, []), len(raw), tree)
            except ValueError:
                problems.append(f"{where} [province] {province}: too many districts for its areas")
                continue
            plan = [(s, run, "") for s, run in zip(raw, runs, strict=True)]
        if len(plan) > len(_ROMAN):
            problems.append(f"{where}: province {province} has {len(plan)} districts, at most {len(_ROMAN)}")
            continue
        for k, (seats, areas, given) in enumerate(plan):
            label = given or (upper if len(plan) == 1 else f"{upper} {_ROMAN[k]}")
            districts.append(District(f"{province}{k + 1:02d}", label, seats, tuple(areas)))
    choices = [p.choice for p in parties if not p.choice.region]
    choices += _candidates(districts, [p for p in parties if not p.choice.region], random.Random(f"pdpr:{seed}"))
    return Contest("pdpr", name, "", voters, tuple(choices), tuple(districts), "pdpr")


def _pdpd(election: Mapping[str, Any], tree: _Tree, where: str, seed: int, problems: list[str]) -> Contest:
    name, voters = _contest_table(election, "pdpd", where, problems)
    table = _table(election, "pdpd", where, problems)
    low = _int(table.get("min_candidates"), f"{where} [pdpd] min_candidates", problems)
    high = _int(table.get("max_candidates"), f"{where} [pdpd] max_candidates", problems)
    if not 1 <= low <= high <= 99:
        problems.append(f"{where} [pdpd]: need 1 <= min_candidates <= max_candidates <= 99")
        return Contest("pdpd", name, "", voters, (), (), "pdpd")
    rng = random.Random(f"pdpd:{seed}")
    districts = [District(p, _upper(tree.names[p]), 4, (p,)) for p in tree.provinces]
    choices = [
        Choice(f"{d.code}-{k}", f"CALON DPD {k} {d.name}", k, _PALETTE[k % len(_PALETTE)], district=d.code)
        for d in districts
        for k in range(1, rng.randint(low, high) + 1)
    ]
    return Contest("pdpd", name, "", voters, tuple(choices), tuple(districts), "pdpd")


def _dprd(
    data: Mapping[str, Any],
    election: Mapping[str, Any],
    parties: Sequence[_Party],
    tree: _Tree,
    where: str,
    seed: int,
    problems: list[str],
) -> list[Contest]:
    election_where = where.replace("dprd.toml", "election.toml")
    low, high = SEATS["pdprdp"]
    provinsi = _table(data, "provinsi", where, problems)
    for code in sorted(set(provinsi) - set(tree.provinces)):
        problems.append(f"{where} [provinsi]: no province with code {code!r}")
    for code in sorted(set(tree.provinces) - set(provinsi)):
        problems.append(f"{where} [provinsi]: province {code} ({tree.names[code]}) has no seats")
    districts: list[District] = []
    for province in tree.provinces:
        if province not in provinsi:
            continue
        seats = _int(provinsi[province], f"{where} [provinsi] {province}", problems)
        if not 20 <= seats <= 120:
            problems.append(f"{where} [provinsi] {province}: {seats} seats, a DPRD provinsi has 20-120")
            continue
        n = max(math.ceil(seats / high), min(seats // low, round(seats / _DPRD_TARGET_SEATS)))
        try:
            runs = _cut(tree.children.get(province, []), n, tree)
        except ValueError:
            problems.append(f"{where} [provinsi] {province}: {seats} seats need {n} districts, more than its kecamatan")
            continue
        upper = _upper(tree.names[province])
        for k, (run, s) in enumerate(
            zip(runs, _apportion([sum(map(tree.weight, r)) for r in runs], seats, low, high), strict=True)
        ):
            districts.append(District(f"{province}{k + 1:02d}", f"{upper} {k + 1}", s, tuple(run)))
    name, voters = _contest_table(election, "pdprdp", election_where, problems)
    candidates = _candidates(districts, parties, random.Random(f"pdprdp:{seed}"))
    dprdp = Contest("pdprdp", name, "", voters, (*(p.choice for p in parties), *candidates), tuple(districts), "pdprdp")

    not_held = data.get("kabupaten_kota_not_held_in", [])
    if not isinstance(not_held, list) or not all(isinstance(c, str) and c in tree.provinces for c in not_held):
        problems.append(f"{where}: kabupaten_kota_not_held_in must list province codes")
        not_held = []
    known_seats = data.get("kabupaten_kota", {})
    if not isinstance(known_seats, dict):
        problems.append(f"{where}: [kabupaten_kota] must be a table")
        known_seats = {}
    for code in sorted(known_seats):
        if code not in tree.names or len(code) != 4 or code[:2] in not_held:
            problems.append(f"{where} [kabupaten_kota]: no kabupaten/kota with a DPRD with code {code!r}")
    districts = []
    for province in tree.provinces:
        if province in not_held:
            continue
        for kab in tree.children.get(province, []):
            kecamatan = tree.children.get(kab, [])
            # Seats by law run 20-55 with population; the number of desa stands in for it.
            seats = 20 + 5 * min(7, tree.weight(kab) // 50)
            if kab in known_seats:
                seats = _int(known_seats[kab], f"{where} [kabupaten_kota] {kab}", problems)
                if not 20 <= seats <= 55:
                    problems.append(f"{where} [kabupaten_kota] {kab}: {seats} seats, a DPRD kabupaten/kota has 20-55")
                    continue
            seats = min(seats, high * len(kecamatan))
            n = max(math.ceil(seats / high), min(len(kecamatan), seats // low, round(seats / _DPRD_TARGET_SEATS)))
            if not kecamatan or n > len(kecamatan):
                problems.append(f"{where}: kabupaten/kota {kab} has too few kecamatan for {seats} seats")
                continue
            runs = _cut(kecamatan, n, tree)
            upper = _upper(tree.names[kab])
            apportioned = _apportion([sum(map(tree.weight, r)) for r in runs], seats, low, high)
            for k, (run, s) in enumerate(zip(runs, apportioned, strict=True)):
                districts.append(District(f"{kab}{k + 1:02d}", f"{upper} {k + 1}", s, tuple(run)))
    name, voters = _contest_table(election, "pdprdk", election_where, problems)
    candidates = _candidates(districts, parties, random.Random(f"pdprdk:{seed}"))
    dprdk = Contest("pdprdk", name, "", voters, (*(p.choice for p in parties), *candidates), tuple(districts), "pdprdk")
    return [dprdp, dprdk]


def _pilkada(election: Mapping[str, Any], tree: _Tree, where: str, seed: int, problems: list[str]) -> list[Contest]:
    known = _table(election, "pilkada_pairs", where, problems)
    contests: list[Contest] = []
    regions: dict[str, list[str]] = {}
    for kind in ("pkwkp", "pkwkk"):
        name, voters = _contest_table(election, kind, where, problems)
        table = _table(election, kind, where, problems)
        if kind == "pkwkp":
            skip = table.get("not_held", [])
            regions[kind] = [p for p in tree.provinces if p not in skip]
        else:
            skip = table.get("not_held_in", [])
            regions[kind] = [k for p in tree.provinces if p not in skip for k in tree.children.get(p, [])]
        if not isinstance(skip, list) or not all(isinstance(c, str) and c in tree.provinces for c in skip):
            problems.append(f"{where} [{kind}]: the regions not holding one must be province codes")
        counts, weights = table.get("pairs"), table.get("pair_weights")
        if (
            not isinstance(counts, list)
            or not isinstance(weights, list)
            or len(counts) != len(weights)
            or not counts
            or not all(isinstance(c, int) and 1 <= c <= 20 for c in counts)
            or not all(isinstance(w, int) and w >= 0 for w in weights)
            or not sum(weights)
        ):
            problems.append(f"{where} [{kind}]: pairs (1-20 each) and pair_weights must be lists of the same length")
            counts, weights = [2], [1]
        rng = random.Random(f"{kind}:{seed}")
        districts: list[District] = []
        choices: list[Choice] = []
        for region in regions[kind]:
            d = District(region, _upper(tree.names[region]), 1, (region,))
            districts.append(d)
            named = known.get(region)
            n = rng.choices(counts, weights)[0]
            pairs: list[tuple[str, str]] = [
                (f"PASLON {k} {d.name}", _PALETTE[k % len(_PALETTE)]) for k in range(1, n + 1)
            ]
            if named is not None:
                if not isinstance(named, list) or not all(isinstance(p, dict) for p in named) or not named:
                    problems.append(f"{where} [pilkada_pairs] {region}: must be a non-empty list of {{nama, warna}}")
                else:
                    pairs = [
                        (
                            _str(p.get("nama"), f"{where} [pilkada_pairs] {region} #{i + 1} nama", problems),
                            _str(p.get("warna"), f"{where} [pilkada_pairs] {region} #{i + 1} warna", problems),
                        )
                        for i, p in enumerate(named)
                    ]
            choices.extend(
                Choice(f"{region}-{k}", nama, k, warna, district=region) for k, (nama, warna) in enumerate(pairs, 1)
            )
            if len(pairs) == 1:  # a lone pair runs against the empty column (kolom kosong)
                choices.append(Choice(f"{region}-0", "KOLOM KOSONG", 0, "#9E9E9E", district=region))
        contests.append(Contest(kind, name, "", voters, tuple(choices), tuple(districts), kind))
    for region in sorted(set(known) - set(regions["pkwkp"]) - set(regions["pkwkk"])):
        problems.append(f"{where} [pilkada_pairs]: no Pilkada is held in {region!r}")
    return contests


def _abroad(data: Mapping[str, Any], where: str, problems: list[str]) -> tuple[list[Area], list[tuple[str, str, int]]]:
    areas = [Area(ABROAD, None, 1, ABROAD_NAME)]
    groups: list[tuple[str, str, int]] = []
    countries = data.get("country")
    if not isinstance(countries, list) or not countries:
        problems.append(f"{where}: [[country]] tables are missing")
        return areas, groups
    if len(countries) > 99:
        problems.append(f"{where}: at most 99 countries, not {len(countries)}")
    for i, country in enumerate(countries[:99]):
        at = f"{where} country #{i + 1}"
        if not isinstance(country, dict):
            problems.append(f"{at}: must be a table")
            continue
        code = f"{ABROAD}{i + 1:02d}"
        areas.append(Area(code, ABROAD, 2, _str(country.get("nama"), f"{at} nama", problems)))
        reps = country.get("representation")
        if not isinstance(reps, list) or not reps or len(reps) > 99:
            problems.append(f"{at}: representation must be a list of 1-99 tables")
            continue
        for j, rep in enumerate(reps):
            rat = f"{at} representation #{j + 1}"
            if not isinstance(rep, dict):
                problems.append(f"{rat}: must be a table")
                continue
            if unknown := set(rep) - {"nama", *STATION_KINDS}:
                problems.append(f"{rat}: unknown keys {sorted(unknown)}")
            rcode = f"{code}{j + 1:02d}"
            areas.append(Area(rcode, code, 3, _str(rep.get("nama"), f"{rat} nama", problems)))
            total = 0
            for kind, (group, label, _, _) in STATION_KINDS.items():
                count = _int(rep.get(kind, 0), f"{rat} {kind}", problems)
                if not 0 <= count <= 999:
                    problems.append(f"{rat}: {kind} {count} must be between 0 and 999")
                    continue
                total += count
                if count:
                    areas.append(Area(f"{rcode}{group}", rcode, 4, label))
                    groups.append((f"{rcode}{group}", kind, count))
            if not total:
                problems.append(f"{rat}: holds no station (give tpsln, ksk or pos)")
    return areas, groups
