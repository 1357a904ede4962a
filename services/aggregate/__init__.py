"""aggregate: owns the totals. Idempotent versioned updates in, rolled up TPS → desa → … → nasional."""

from pathlib import Path

SQL_DIR = Path(__file__).parent / "sql"
