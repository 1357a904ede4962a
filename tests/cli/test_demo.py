"""`suara demo --once`: what `make demo` runs, end to end, checked against the database it filled."""

from __future__ import annotations

import json
import re
from pathlib import Path

import asyncpg

from suara.v1 import form_pb2
from tests.support.processes import run_suara, suara_env


async def test_demo_runs_the_pipeline_and_reports_true_national_totals(
    db_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    env = suara_env(
        DATABASE_URL=db_url,
        SUARA_DATA_DIR=tmp_path / "state",
        SUARA_TALLY_PORT="0",
        SUARA_TALLY_INTERNAL_PORT="0",
        SUARA_AGGREGATE_PORT="0",
        SUARA_AGGREGATE_INTERNAL_PORT="0",
        SUARA_LOG_LEVEL="warning",
    )
    result = await run_suara("demo", "--once", "--forms", "60", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "verification: OK" in result.stdout
    assert re.search(r"^verification: OK .*, [1-9]\d* signed published heads reached;", result.stdout, re.M)
    # `suara demo` is `suara up` plus the election: the same ready line, then the report.
    assert re.search(
        r"^ready tally=127\.0\.0\.1:\d+ site=http://127\.0\.0\.1:\d+/ admin_key=/\S+ ca=/\S+$", result.stdout, re.M
    )

    # The oracle: every TPS's current, non-quarantined form, decoded from the signed bytes tally stored.
    rows = await db.fetch(
        "SELECT s.payload FROM tally.current c JOIN tally.submission s ON s.id = c.submission_id"
        " WHERE s.contest = 'ppwp' AND s.outcome = 'ACCEPTED'"
    )
    expected: dict[str, int] = {}
    for row in rows:
        for choice, votes in form_pb2.CHasilForm.FromString(bytes(row["payload"])).votes.items():
            expected[choice] = expected.get(choice, 0) + votes
    line = next(line for line in result.stdout.splitlines() if line.startswith("nasional (ppwp):"))
    shown = {choice: int(n.replace(",", "")) for choice, n in re.findall(r"(\d{6}): ([\d,]+)", line)}
    assert shown == expected
    published = json.loads((tmp_path / "site" / "pemilu/hhcw/ppwp.json").read_bytes())  # cwd: ./site
    assert {c: v for c, v in published["chart"].items() if c != "persen"} == expected
    assert published["progres"]["progres"] == len(rows)
    assert "site: http://127.0.0.1:" in result.stdout
    progress = next(line for line in result.stdout.splitlines() if line.startswith("progress:"))
    assert progress.startswith(f"progress: {len(rows):,} of ")
    assert not (tmp_path / "state" / "up.json").exists(), "--once stops every child it started"
