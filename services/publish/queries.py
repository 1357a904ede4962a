"""publish's named SQL (sql/queries.sql)."""

from services.publish import SQL_DIR
from suara.runtime.queries import Queries

QUERIES = Queries(SQL_DIR / "queries.sql")
