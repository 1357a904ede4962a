"""`suara tally dead-letters [redeliver]`: an operator lists what the relay set aside, and hands it back."""

from __future__ import annotations

import json
from pathlib import Path

from services.tally.queries import QUERIES
from tests.support.factories import consistent_form, signed
from tests.support.processes import run_suara
from tests.support.tally import Tally


async def test_dead_letters_are_listed_and_handed_back(tally: Tally, cli_env: dict[str, str], tmp_path: Path) -> None:
    stations = [await tally.station() for _ in range(2)]
    for st in stations:
        await tally.stub.Submit(signed(st.key, consistent_form(st.tps, "ppwp", tally.contests["ppwp"])))
    rows = await tally.db.fetch("SELECT id, tps FROM tally.outbox ORDER BY id")
    dead = rows[0]
    # As the relay settles a reply that refused the first row and took the second.
    await tally.db.execute(
        QUERIES.relay_settle, [rows[1]["id"]], [dead["id"]], ["refused: 9 is more than 3"], ["updates[0].totals.x"]
    )

    listed = await run_suara("tally", "dead-letters", env=cli_env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    [entry] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (entry["outbox_id"], entry["tps"], entry["contest"], entry["version"]) == (
        dead["id"],
        dead["tps"],
        "ppwp",
        1,
    )
    assert (entry["reason"], entry["fields"], entry["redelivered_at"]) == (
        "refused: 9 is more than 3",
        ["updates[0].totals.x"],
        None,
    )
    assert await tally.db.fetchval("SELECT count(*) FROM tally.outbox WHERE delivered_at IS NULL") == 0

    handed = await run_suara("tally", "dead-letters", "redeliver", "--every", env=cli_env, cwd=tmp_path)
    assert handed.returncode == 0, handed.stderr
    assert f"1 handed back to the relay: {dead['id']}" in handed.stdout
    pending = await tally.db.fetch("SELECT id FROM tally.outbox WHERE delivered_at IS NULL")
    assert [r["id"] for r in pending] == [dead["id"]], "the relay sends it again"
    again = await run_suara("tally", "dead-letters", env=cli_env, cwd=tmp_path)
    assert again.stdout.strip() == ""
    everything = await run_suara("tally", "dead-letters", "--all", env=cli_env, cwd=tmp_path)
    assert json.loads(everything.stdout)["redelivered_at"] is not None
