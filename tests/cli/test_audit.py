"""`suara audit verify` and `suara audit site` on a chain tally wrote and a site publish wrote, then on
ones rewritten, cut back or altered behind their backs."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import random
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from services.tally.credentials import enroll_device
from suara.election.signing import DeviceKey
from suara.v1 import tally_pb2
from tests.support.factories import consistent_form, signed
from tests.support.oracles import chain as chain_oracle
from tests.support.processes import Completed, run_suara
from tests.support.publish import Pipeline
from tests.support.tally import CHAIN_KEY, Tally


async def _submit(tally: Tally, stations: int) -> None:
    """Each station sends a form and then a correction: two chain records per station."""
    for _ in range(stations):
        st = await tally.station()
        for version in (1, 2):
            form = consistent_form(st.tps, "ppwp", tally.contests["ppwp"], version)
            response = await tally.stub.Submit(signed(st.key, form))
            assert response.outcome == tally_pb2.OUTCOME_ACCEPTED


async def test_verify_reports_an_intact_chain_then_names_a_tampered_record(
    tally: Tally, cli_env: dict[str, str], tmp_path: Path
) -> None:
    await _submit(tally, 3)
    records = await tally.count("submission")  # the oracle: what the table holds
    assert records > 0

    ok = await run_suara("audit", "verify", env=cli_env, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    head = await tally.db.fetchval("SELECT hash FROM tally.chain_head")
    assert f"chain OK: {records:,} records, head {bytes(head).hex()}" in ok.stdout

    ok_json = await run_suara("audit", "verify", "--json", env=cli_env, cwd=tmp_path)
    assert ok_json.returncode == 0
    report = json.loads(ok_json.stdout)
    assert (report["ok"], report["records"], report["problems"]) == (True, records, [])
    assert report["head_hash"] == bytes(head).hex()

    # Rewrite one stored form's bytes, as someone with write access to the database could.
    position = records // 2 + 1
    payload = await tally.db.fetchval("SELECT payload FROM tally.submission WHERE chain_position = $1", position)
    forged = bytearray(payload)
    forged[-1] ^= 1
    await tally.db.execute(
        "UPDATE tally.submission SET payload = $1 WHERE chain_position = $2", bytes(forged), position
    )

    broken = await run_suara("audit", "verify", env=cli_env, cwd=tmp_path)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "chain BROKEN" in broken.stdout and f"{records:,} records" in broken.stdout
    problem_lines = [line for line in broken.stdout.splitlines() if line.startswith("  - ")]
    assert problem_lines and all(f"position {position} " in line for line in problem_lines)

    broken_json = await run_suara("audit", "verify", "--json", env=cli_env, cwd=tmp_path)
    assert broken_json.returncode == 1
    report = json.loads(broken_json.stdout)
    assert report["ok"] is False and report["records"] == records
    assert report["problems"] and all(f"position {position} " in p for p in report["problems"])


async def test_verify_of_an_empty_chain_is_ok(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = await run_suara("audit", "verify", "--json", env=cli_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["ok"], report["records"], report["problems"]) == (True, 0, [])


# Against a published site: the heads publish put there, signed with tally's chain key
# (tests/support/publish.py's pipeline: tally, its relay, aggregate and a publisher writing pipeline.site).


async def _published(pipeline: Pipeline, forms: int, seed: int) -> None:
    await pipeline.random_night(random.Random(seed), forms)
    assert await pipeline.cycle() is not None


async def _audit(env: dict[str, str], cwd: Path, *args: str) -> Completed:
    return await run_suara("audit", *args, env=env, cwd=cwd)


def _problems(result: Completed) -> list[str]:
    return [line[4:] for line in result.stdout.splitlines() if line.startswith("  - ")]


async def _drop_newest(db: asyncpg.Connection, keep: int) -> None:
    """Delete every record after position `keep` and set the head back to the last one kept: a chain as it
    was, as far as the database alone can tell (what an insider with write access can do)."""
    doomed = "SELECT id FROM tally.submission WHERE chain_position > $1"
    await db.execute(f"DELETE FROM tally.outbox WHERE submission_id IN ({doomed})", keep)
    await db.execute(f"DELETE FROM tally.current WHERE submission_id IN ({doomed})", keep)
    await db.execute("DELETE FROM tally.submission WHERE chain_position > $1", keep)
    last = await db.fetchval("SELECT chain_hash FROM tally.submission WHERE chain_position = $1", keep)
    await db.execute("UPDATE tally.chain_head SET position = $1, hash = $2", keep, last)


async def test_a_genuine_night_passes_both_audits_from_a_directory_and_a_url(
    pipeline: Pipeline, cli_env: dict[str, str], tmp_path: Path
) -> None:
    await _published(pipeline, 12, seed=1)
    await _published(pipeline, 6, seed=2)
    head = await pipeline.db.fetchrow("SELECT position, hash FROM tally.chain_head")

    verified = await _audit(cli_env, tmp_path, "verify", "--against", str(pipeline.site))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"reaches the newest published head (position {head['position']:,})" in verified.stdout

    site = await _audit(cli_env, tmp_path, "site", str(pipeline.site), "--json", "--key-id", CHAIN_KEY.key_id)
    assert site.returncode == 0, site.stdout + site.stderr
    report = json.loads(site.stdout)
    assert (report["ok"], report["keys"], report["problems"]) == (True, [CHAIN_KEY.key_id], [])
    assert report["newest"]["position"] == head["position"]
    assert report["newest"]["hash"] == bytes(head["hash"]).hex()

    with _served(pipeline.site) as url:
        over_http = await _audit(cli_env, tmp_path, "site", url)
        assert over_http.returncode == 0, over_http.stdout + over_http.stderr
        assert over_http.stdout.startswith(f"site OK: {report['heads']} signed heads")
        against_url = await _audit(cli_env, tmp_path, "verify", "--against", url)
        assert against_url.returncode == 0, against_url.stdout + against_url.stderr


async def test_deleting_the_newest_records_and_resetting_the_head_is_found_against_the_site(
    pipeline: Pipeline, cli_env: dict[str, str], tmp_path: Path
) -> None:
    await _published(pipeline, 12, seed=3)
    published = await pipeline.db.fetchval("SELECT position FROM tally.chain_head")
    # What an observer keeps: a copy of the pointer and of the key list, as they were that night.
    saved, saved_keys = tmp_path / "snapshot-then.json", tmp_path / "kunci-rantai-then.json"
    saved.write_bytes((pipeline.site / "suara/snapshot.json").read_bytes())
    saved_keys.write_bytes((pipeline.site / "suara/kunci-rantai.json").read_bytes())
    await _drop_newest(pipeline.db, published - 2)

    alone = await _audit(cli_env, tmp_path, "verify")
    assert alone.returncode == 0, "the database alone is consistent: only a published head can tell"
    against = await _audit(cli_env, tmp_path, "verify", "--against", str(pipeline.site))
    assert against.returncode == 1, against.stdout
    assert any(
        f"head at position {published} " in p and f"the chain has {published - 2} records" in p
        for p in _problems(against)
    ), against.stdout

    from_file = await _audit(cli_env, tmp_path, "verify", "--against", str(saved), "--keys", str(saved_keys))
    assert from_file.returncode == 1 and _problems(from_file) == _problems(against), from_file.stdout
    unkeyed = await _audit(cli_env, tmp_path, "verify", "--against", str(saved))
    assert unkeyed.returncode == 1 and "needs --keys" in unkeyed.stdout, unkeyed.stdout

    # The night goes on from the cut-back head; the next snapshot publishes a shorter chain.
    await pipeline.submit(pipeline.tally_codes("ppwp")[-1], seed=9)
    assert await pipeline.cycle() is not None
    site = await _audit(cli_env, tmp_path, "site", str(pipeline.site))
    assert site.returncode == 1, site.stdout
    assert any(f"position {published - 1} " in p and "cut back" in p for p in _problems(site)), site.stdout


async def test_a_reset_head_is_found(pipeline: Pipeline, cli_env: dict[str, str], tmp_path: Path) -> None:
    await _published(pipeline, 8, seed=4)
    records = await pipeline.db.fetchval("SELECT position FROM tally.chain_head")
    kept = await pipeline.db.fetchval("SELECT chain_hash FROM tally.submission WHERE chain_position = 1")
    await pipeline.db.execute("UPDATE tally.chain_head SET position = 1, hash = $1", kept)
    for extra in ((), ("--against", str(pipeline.site))):
        result = await _audit(cli_env, tmp_path, "verify", *extra)
        assert result.returncode == 1, result.stdout
        assert f"chain head says 1 records, the chain has {records}" in _problems(result)


async def test_a_rewritten_device_id_is_found(pipeline: Pipeline, cli_env: dict[str, str], tmp_path: Path) -> None:
    await _published(pipeline, 8, seed=5)
    victim = await pipeline.db.fetchrow("SELECT id, tps, chain_position FROM tally.submission WHERE chain_position = 2")
    other = DeviceKey.generate(victim["tps"])  # another device of the same TPS, enrolled
    await enroll_device(pipeline.db, other.device_id, victim["tps"], other.public_key, "other")
    await pipeline.db.execute("UPDATE tally.submission SET device_id = $1 WHERE id = $2", other.device_id, victim["id"])
    # Without signatures, so that it is the link that finds it.
    result = await _audit(cli_env, tmp_path, "verify", "--no-signatures")
    assert result.returncode == 1, result.stdout
    assert any("position 2 " in p and "link hash does not match" in p for p in _problems(result)), result.stdout


async def test_a_rewritten_chain_relinked_to_the_end_is_found_against_the_site(
    pipeline: Pipeline, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """An insider rewrites a fact no signature covers, recomputes every link after it and the head: the
    database is consistent again, but no longer reaches what was published."""
    await _published(pipeline, 10, seed=6)
    published = await pipeline.db.fetchrow("SELECT position, hash FROM tally.chain_head")
    rows = await pipeline.db.fetch("SELECT * FROM tally.submission ORDER BY chain_position")
    previous = bytes(rows[2]["chain_hash"])
    for row in rows[3:]:
        row = dict(row)
        if row["chain_position"] == 4:
            row["received_at"] += timedelta(hours=1)  # "it arrived after the polls closed"
            await pipeline.db.execute(
                "UPDATE tally.submission SET received_at = $1 WHERE id = $2", row["received_at"], row["id"]
            )
        previous = chain_oracle.link(previous, row)
        await pipeline.db.execute("UPDATE tally.submission SET chain_hash = $1 WHERE id = $2", previous, row["id"])
    await pipeline.db.execute("UPDATE tally.chain_head SET hash = $1", previous)

    assert (await _audit(cli_env, tmp_path, "verify")).returncode == 0, "consistent in the database alone"
    against = await _audit(cli_env, tmp_path, "verify", "--against", str(pipeline.site))
    assert against.returncode == 1, against.stdout
    assert any(
        f"no longer reaches the head published at position {published['position']}" in p for p in _problems(against)
    ), against.stdout

    # Republished before anything new arrives: the same position under another hash. (Once the chain has
    # grown past it, the site alone cannot tell; `verify --against` above still can.)
    assert await pipeline.cycle(full=True) is not None
    site = await _audit(cli_env, tmp_path, "site", str(pipeline.site))
    assert site.returncode == 1, site.stdout
    assert any(
        f"head at position {published['position']} is {previous.hex()}" in p and "rewritten" in p
        for p in _problems(site)
    ), site.stdout


async def test_an_altered_site_is_found(pipeline: Pipeline, cli_env: dict[str, str], tmp_path: Path) -> None:
    await _published(pipeline, 10, seed=7)
    await _published(pipeline, 5, seed=8)
    site = pipeline.site
    pointer_file = site / "suara/snapshot.json"
    pointer = json.loads(pointer_file.read_bytes())
    assert (await _audit(cli_env, tmp_path, "site", str(site))).returncode == 0

    # The pointer's head altered: its signature no longer holds.
    altered = {**pointer, "chain_head": {**pointer["chain_head"], "hash": "0" * 64}}
    pointer_file.write_text(json.dumps(altered))
    result = await _audit(cli_env, tmp_path, "site", str(site))
    assert result.returncode == 1
    assert _problems(result) == [
        f"suara/snapshot.json: head at position {pointer['chain_head']['position']} ({'0' * 64}) "
        f"is not validly signed by {CHAIN_KEY.key_id}"
    ]

    # History that shrinks, each head validly signed (by a key the forger added to the site's list).
    forger = Ed25519PrivateKey.generate()
    forger_public = forger.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    keys_file = site / "suara/kunci-rantai.json"
    keys = json.loads(keys_file.read_bytes())
    keys["keys"].append({"key_id": chain_oracle.key_id(forger_public), "public_key": forger_public.hex()})
    keys_file.write_text(json.dumps(keys))
    entries = json.loads((site / "suara/riwayat/ppwp.json").read_bytes())
    assert len(entries) == 2
    first = json.loads((site / f"suara/riwayat/ppwp/{entries[0]['snapshot']}.json").read_bytes())
    shrunk = first["chain_head"]["position"] - 1
    pointer_file.write_text(
        json.dumps({**pointer, "chain_head": chain_oracle.signed_head(forger, forger_public, shrunk, bytes(32))})
    )
    result = await _audit(cli_env, tmp_path, "site", str(site))
    assert result.returncode == 1
    assert [p for p in _problems(result) if "cut back" in p], result.stdout
    pinned = await _audit(cli_env, tmp_path, "site", str(site), "--key-id", CHAIN_KEY.key_id)
    assert any(f"signed by key {chain_oracle.key_id(forger_public)}, not trusted" in p for p in _problems(pinned))


@contextlib.contextmanager
def _served(site: Path) -> Iterator[str]:
    """The site over plain HTTP, as any static server would hand it out."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
