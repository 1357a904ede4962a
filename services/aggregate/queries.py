"""aggregate's named SQL (sql/queries.sql)."""

from services.aggregate import SQL_DIR
from suara.runtime.queries import Queries

QUERIES = Queries(SQL_DIR / "queries.sql")
