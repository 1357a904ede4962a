"""Named SQL queries kept in .sql files.

A file holds blocks that each start with a `-- name: <query_name>` line; the
text up to the next such line is the query. Code refers to queries by name,
so SQL stays reviewable as SQL.
"""

from __future__ import annotations

import re
from pathlib import Path

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
_NAMES: dict[str, str] = {}  # query text -> "component.name", for traces (a query's span is named so)


def name_of(sql: str) -> str | None:
    """The name of a query loaded from a .sql file, as "tally.write_batch"; None for other text."""
    return _NAMES.get(sql)


class Queries:
    def __init__(self, path: Path) -> None:
        text = path.read_text()
        parts = _NAME.split(text)
        self._sql: dict[str, str] = {}
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in self._sql:
                raise ValueError(f"{path}: query {name!r} is defined twice")
            self._sql[name] = body.strip()
            _NAMES[self._sql[name]] = f"{path.parent.parent.name}.{name}"  # services/tally/sql/queries.sql: tally
        self.path = path

    def __getattr__(self, name: str) -> str:
        try:
            return self._sql[name]
        except KeyError:
            raise AttributeError(f"{self.path} has no query named {name!r}") from None

    def names(self) -> list[str]:
        return sorted(self._sql)
