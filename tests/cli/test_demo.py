"""`suara demo --once`: what `make demo` runs, end to end, checked against the database it filled."""

from __future__ import annotations

import hashlib
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
    result = await run_suara("demo", "--once", "--forms", "60", "--photos", "3", env=env, cwd=tmp_path)
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

    # Three TPS sent the photos of their form; the site shows each, as the bytes the signed form names.
    current = await db.fetch(
        "SELECT s.tps, s.payload FROM tally.current c JOIN tally.submission s ON s.id = c.submission_id"
        " WHERE s.contest = 'ppwp'"
    )
    photographed = {}
    for row in current:
        form = form_pb2.CHasilForm.FromString(bytes(row["payload"]))
        if form.photo_sha256:
            photographed[row["tps"]] = list(form.photo_sha256)
    assert len(photographed) == 3 and all(len(shas) == 3 for shas in photographed.values())
    for tps, shas in photographed.items():
        rel = "/".join(tps[:n] for n in (2, 4, 6, 10, 13))
        tps_file = json.loads((tmp_path / "site" / f"pemilu/hhcw/ppwp/{rel}.json").read_bytes())
        assert tps_file["images"] == [f"/foto/{sha[:2]}/{sha}.jpg" for sha in shas]
        for sha in shas:
            body = (tmp_path / "site" / f"foto/{sha[:2]}/{sha}.jpg").read_bytes()
            assert hashlib.sha256(body).hexdigest() == sha
            assert 100_000 < len(body) < 1_000_000  # a page photographed, not a thumbnail
    assert re.search(r"^form photos: 3 TPS sent theirs, e\.g\. http://127\.0\.0\.1:\d+/#ppwp/\d+/", result.stdout, re.M)
