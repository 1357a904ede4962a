"""What the database holds, component by component: each owns one schema and its migrations."""

from __future__ import annotations

from pathlib import Path

import services.aggregate
import services.publish
import services.tally
import suara.registry

# Order matters only across components that read each other's tables at
# migration time; none do, but registry goes first as reference data.
MIGRATION_DIRS: list[tuple[str, Path]] = [
    ("registry", Path(suara.registry.__file__).parent / "sql" / "migrations"),
    ("tally", Path(services.tally.__file__).parent / "sql" / "migrations"),
    ("aggregate", services.aggregate.SQL_DIR / "migrations"),
    ("publish", services.publish.SQL_DIR / "migrations"),
]
