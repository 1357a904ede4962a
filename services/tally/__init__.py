"""tally: accepts signed C.Hasil forms, stores them durably and idempotently, and chains them."""

from pathlib import Path

SQL_DIR = Path(__file__).parent / "sql"
