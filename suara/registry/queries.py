"""The registry's named SQL (sql/queries.sql)."""

from pathlib import Path

from suara.runtime.queries import Queries

QUERIES = Queries(Path(__file__).parent / "sql" / "queries.sql")
