"""The SQL the runbook's alert section gives an operator runs on suara's schema as migrated, and finds
what it is for: the conflict alarms, and the quarantined forms of the last half hour grouped by
contest, province and failed check."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import timedelta
from pathlib import Path

import asyncpg


def _alert_section_queries(repo_root: Path) -> dict[str, str]:
    """The section's ```sql blocks, by the alert (### heading) they stand under."""
    text = (repo_root / "docs" / "runbook.md").read_text()
    section = text.split("## Alerts: what each means and what to do", 1)[1].split("\n## ", 1)[0]
    queries = {}
    for entry in section.split("\n### ")[1:]:
        alert, body = entry.split("\n", 1)
        for query in re.findall(r"```sql\n(.*?)```", body, re.DOTALL):
            queries[alert.strip()] = query
    return queries


async def _store(db: asyncpg.Connection, position: int, tps: str, outcome: str, checks: list[str], age_s: int) -> None:
    """One stored form, written as the rows tally writes (the chain itself is not what is read here)."""
    device = f"dev_{position}"
    await db.execute(
        "INSERT INTO tally.device (device_id, tps, public_key) VALUES ($1, $2, $3)",
        device,
        tps,
        hashlib.sha256(device.encode()).digest(),
    )
    await db.execute(
        """INSERT INTO tally.submission (id, tps, contest, version, payload, payload_sha256, signature, device_id,
               outcome, failed_checks, chain_position, chain_hash, received_at, chain_version)
           VALUES ($1, $2, 'ppwp', 1, $3, $4, $5, $6, $7, $8, $9, $4, now() - $10::interval, 2)""",
        uuid.uuid4(),
        tps,
        b"{}",
        hashlib.sha256(device.encode() + b"p").digest(),
        bytes(64),
        device,
        outcome,
        checks,
        position,
        timedelta(seconds=age_s),
    )


async def test_the_alert_sections_queries_find_what_they_are_for(repo_root: Path, db: asyncpg.Connection) -> None:
    queries = _alert_section_queries(repo_root)
    assert set(queries) == {"SuaraFormConflict", "SuaraQuarantineJump"}, queries

    await db.execute(
        "INSERT INTO tally.alarm (kind, tps, contest, version, detail) VALUES ('conflict_alarm', $1, 'ppwp', 2, $2)",
        "3101011001001",
        json.dumps({"device_id": "dev_x"}),
    )
    await db.execute(
        "INSERT INTO tally.alarm (kind, tps, contest, version) VALUES ('revoked_device', '3101011001002', 'ppwp', 1)"
    )
    conflicts = await db.fetch(queries["SuaraFormConflict"])
    assert [(r["tps"], r["version"], json.loads(r["detail"])["device_id"]) for r in conflicts] == [
        ("3101011001001", 2, "dev_x")
    ]

    sum_check, lp_check = "sum_choices_ne_suara_sah", "j_ne_l_plus_p"
    await _store(db, 1, "3101011001001", "QUARANTINED", [sum_check], 60)
    await _store(db, 2, "3101011001002", "QUARANTINED", [sum_check, lp_check], 120)
    await _store(db, 3, "3201011001001", "QUARANTINED", [sum_check], 300)
    await _store(db, 4, "3101011001003", "ACCEPTED", [], 60)
    await _store(db, 5, "3101011001004", "QUARANTINED", [lp_check], 7200)  # before the last half hour
    found = await db.fetch(queries["SuaraQuarantineJump"])
    assert [tuple(r) for r in found][:1] == [("ppwp", "31", sum_check, 2)]
    assert sorted(tuple(r) for r in found) == [
        ("ppwp", "31", lp_check, 1),
        ("ppwp", "31", sum_check, 2),
        ("ppwp", "32", sum_check, 1),
    ]
