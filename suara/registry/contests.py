"""The contests config (contests.toml): which contests are held, where, and their choices."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from suara.election.contest import CONTEST_KINDS, Choice, Contest

DEFAULT_PATH = Path(__file__).parent / "contests.toml"

# A Pilkada is held in one region, never nationwide: governor in a province,
# regent/mayor in a kabupaten/kota. Other kinds may take any scope.
_SCOPE_LENGTH = {"pkwkp": 2, "pkwkk": 4}
_SCOPE = re.compile(r"([0-9]{2}|[0-9]{4})?")
_COLOUR = re.compile(r"#[0-9A-Fa-f]{6}")
_CONTEST_KEYS = {"id", "kind", "name", "scope", "max_voters_per_tps", "choices"}
_CHOICE_KEYS = {"id", "nama", "nomor_urut", "warna"}


class ContestConfigError(ValueError):
    """The contests file is missing, not TOML, or describes contests suara cannot hold."""


def read_contests(path: Path | None = None) -> list[Contest]:
    """The contests of `path` (default: the packaged contests.toml), in file order.

    Every problem found is reported at once, one per line, each naming the
    contest and choice it is about.
    """
    path = path or DEFAULT_PATH
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ContestConfigError(f"{path}: cannot read contests: {exc}") from exc
    problems: list[str] = []
    contests = _parse(data, problems)
    if problems:
        raise ContestConfigError(f"{path}: invalid contests:\n" + "\n".join(f"  {p}" for p in problems))
    return contests


def _parse(data: Mapping[str, Any], problems: list[str]) -> list[Contest]:
    if set(data) - {"contest"}:
        problems.append(f"unknown top-level keys {sorted(set(data) - {'contest'})}; expected [[contest]] tables")
    tables = data.get("contest")
    if not isinstance(tables, list) or not tables:
        problems.append("no [[contest]] tables")
        return []
    contests: list[Contest] = []
    seen: set[str] = set()
    for i, table in enumerate(tables):
        contest = _contest(table, f"contest #{i + 1}", problems)
        if contest is None:
            continue
        if contest.id in seen:
            problems.append(f"contest {contest.id!r}: id used twice")
        seen.add(contest.id)
        contests.append(contest)
    return contests


def _contest(table: Mapping[str, Any], where: str, problems: list[str]) -> Contest | None:
    before = len(problems)
    cid = table.get("id")
    if not isinstance(cid, str) or not cid:
        problems.append(f"{where}: id must be a non-empty string")
        return None
    where = f"contest {cid!r}"
    if unknown := set(table) - _CONTEST_KEYS:
        problems.append(f"{where}: unknown keys {sorted(unknown)}")
    kind = table.get("kind", cid)
    if kind not in CONTEST_KINDS:
        problems.append(f"{where}: unknown kind {kind!r} (set `kind` to one of {', '.join(CONTEST_KINDS)})")
    name = _str(table, "name", where, problems)
    scope = table.get("scope", "")
    if not isinstance(scope, str) or not _SCOPE.fullmatch(scope):
        problems.append(f"{where}: scope {scope!r} must be '' (national), a province or a kabupaten/kota code")
    elif kind in _SCOPE_LENGTH and len(scope) != _SCOPE_LENGTH[kind]:
        problems.append(f"{where}: a {kind} contest needs a {_SCOPE_LENGTH[kind]}-digit scope, not {scope!r}")
    max_voters = _int(table, "max_voters_per_tps", where, problems)
    if max_voters is not None and not 1 <= max_voters <= 600:
        problems.append(f"{where}: max_voters_per_tps must be between 1 and 600, not {max_voters}")
    choices = _choices(table.get("choices"), where, problems)
    if len(problems) > before or name is None or max_voters is None:
        return None
    return Contest(cid, name, str(scope), max_voters, choices, kind=str(kind))


def _choices(raw: Any, where: str, problems: list[str]) -> tuple[Choice, ...]:
    if not isinstance(raw, list) or not raw:
        problems.append(f"{where}: choices must be a non-empty list")
        return ()
    choices: list[Choice] = []
    ids: set[str] = set()
    numbers: set[int] = set()
    for i, item in enumerate(raw):
        at = f"{where} choice #{i + 1}"
        if not isinstance(item, dict):
            problems.append(f"{at}: must be a table with {sorted(_CHOICE_KEYS)}")
            continue
        if unknown := set(item) - _CHOICE_KEYS:
            problems.append(f"{at}: unknown keys {sorted(unknown)}")
        cid = _str(item, "id", at, problems)
        nama = _str(item, "nama", at, problems)
        nomor_urut = _int(item, "nomor_urut", at, problems)
        warna = _str(item, "warna", at, problems)
        if cid is not None:
            if cid in ids:
                problems.append(f"{at}: choice id {cid!r} used twice")
            ids.add(cid)
        if nomor_urut is not None:
            if nomor_urut in numbers:
                problems.append(f"{at}: nomor_urut {nomor_urut} used twice")
            numbers.add(nomor_urut)
        if warna is not None and not _COLOUR.fullmatch(warna):
            problems.append(f"{at}: warna {warna!r} must be a colour like '#1A2B3C'")
            warna = None
        if cid is not None and nama is not None and nomor_urut is not None and warna is not None:
            choices.append(Choice(cid, nama, nomor_urut, warna))
    return tuple(choices)


def _str(table: Mapping[str, Any], key: str, where: str, problems: list[str]) -> str | None:
    value = table.get(key)
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}: {key} must be a non-empty string")
        return None
    return value


def _int(table: Mapping[str, Any], key: str, where: str, problems: list[str]) -> int | None:
    value = table.get(key)
    # bool is an int to Python, but `nomor_urut = true` is a mistake.
    if not isinstance(value, int) or isinstance(value, bool):
        problems.append(f"{where}: {key} must be an integer")
        return None
    return value
