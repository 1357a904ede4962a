"""Four chains end to end: publish puts every chain's signed head in the pointer and every history entry,
`suara audit site` checks all four, `suara audit verify --against` checks the database reaches each, and
cutting back any one chain is found (docs/domain.md, "The chain"; docs/layout.md)."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest

from tests.support.oracles import chain as oracle
from tests.support.processes import Completed, run_suara
from tests.support.publish import Pipeline, open_pipeline
from tests.support.tally import BASE_SETTINGS, CHAIN_KEY, with_tally

K = 4


@pytest.fixture
async def pipeline4(db_url: str, db: asyncpg.Connection, tmp_path: Path) -> AsyncIterator[Pipeline]:
    async with open_pipeline(db_url, db, tmp_path, with_tally(BASE_SETTINGS, chains=K)) as p:
        yield p


async def _audit(env: dict[str, str], cwd: Path, *args: str) -> Completed:
    return await run_suara("audit", *args, env=env, cwd=cwd)


def _problems(result: Completed) -> list[str]:
    return [line[4:] for line in result.stdout.splitlines() if line.startswith("  - ")]


async def _heads(db: asyncpg.Connection) -> dict[int, tuple[int, bytes]]:
    return {r["chain"]: (r["position"], bytes(r["hash"])) for r in await db.fetch("SELECT * FROM tally.chain_head")}


async def test_four_chains_published_audited_and_one_cut_back_is_found(
    pipeline4: Pipeline, cli_env: dict[str, str], tmp_path: Path
) -> None:
    pipeline = pipeline4
    await pipeline.random_night(random.Random(7), 40)
    assert await pipeline.cycle() is not None
    heads = await _heads(pipeline.db)
    assert sorted(heads) == list(range(K)) and all(p > 0 for p, _ in heads.values()), heads

    # The pointer carries all four heads, each signed over its chain and K (the oracle's encoding).
    pointer = json.loads((pipeline.site / "suara/snapshot.json").read_bytes())
    published = pointer["chain_heads"]
    assert [(h["chain"], h["chains"]) for h in published] == [(c, K) for c in range(K)]
    for h in published:
        assert (h["position"], bytes.fromhex(h["hash"])) == heads[h["chain"]]
        assert oracle.head_verifies(CHAIN_KEY.public_key, h)
    history = sorted((pipeline.site / "suara/riwayat").rglob("*.json"))
    entries = [json.loads(p.read_bytes()) for p in history if p.name != "index.json"]
    assert entries and all(len(e.get("chain_heads", ())) == K for e in entries if "nasional" in e)

    site = await _audit(cli_env, tmp_path, "site", str(pipeline.site), "--json", "--key-id", CHAIN_KEY.key_id)
    assert site.returncode == 0, site.stdout + site.stderr
    report = json.loads(site.stdout)
    assert (report["ok"], report["chains"], report["problems"]) == (True, K, [])
    assert report["heads"] % K == 0 and report["heads"] >= K

    verified = await _audit(cli_env, tmp_path, "verify", "--against", str(pipeline.site))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"chains OK: {sum(p for p, _ in heads.values()):,} records in {K} chains" in verified.stdout
    assert f"reaches the newest published head of each of {K} chains" in verified.stdout

    # A pointer whose chain_head is not chain 0's (here chain 1's, validly signed) is found.
    altered = pipeline.site.parent / f"{pipeline.site.name}-altered"
    shutil.copytree(pipeline.site, altered)
    try:
        (altered / "suara/snapshot.json").write_text(json.dumps({**pointer, "chain_head": published[1]}))
        odd = await _audit(cli_env, tmp_path, "site", str(altered))
    finally:
        shutil.rmtree(altered)
    assert odd.returncode == 1 and any("suara/snapshot.json: a chain head has" in p for p in _problems(odd)), odd.stdout

    # Cut one chain back by a record and reset its head row to match: consistent to the database alone.
    victim = max(heads, key=lambda c: heads[c][0])
    position = heads[victim][0]
    doomed = await pipeline.db.fetchval(
        "SELECT id FROM tally.submission WHERE chain = $1 AND chain_position = $2", victim, position
    )
    await pipeline.db.execute("DELETE FROM tally.outbox WHERE submission_id = $1", doomed)
    await pipeline.db.execute("DELETE FROM tally.current WHERE submission_id = $1", doomed)
    await pipeline.db.execute("DELETE FROM tally.submission WHERE id = $1", doomed)
    kept = await pipeline.db.fetchval(
        "SELECT chain_hash FROM tally.submission WHERE chain = $1 AND chain_position = $2", victim, position - 1
    )
    await pipeline.db.execute(
        "UPDATE tally.chain_head SET position = $1, hash = $2 WHERE chain = $3", position - 1, kept, victim
    )
    alone = await _audit(cli_env, tmp_path, "verify")
    assert alone.returncode == 0, "the database alone is consistent: only a published head can tell"
    against = await _audit(cli_env, tmp_path, "verify", "--against", str(pipeline.site))
    assert against.returncode == 1, against.stdout
    assert any(
        f"a head of chain {victim} at position {position} " in p and f"chain {victim} has {position - 1} records" in p
        for p in _problems(against)
    ), against.stdout

    # The next snapshot publishes the cut-back head: the site audit alone sees that chain go down.
    await pipeline.submit(pipeline.tally_codes("ppwp")[-1], "ppwp", 9, seed=1)
    assert await pipeline.cycle() is not None
    cut = await _audit(cli_env, tmp_path, "site", str(pipeline.site))
    assert cut.returncode == 1, cut.stdout
    assert any("the chain was cut back" in p for p in _problems(cut)), cut.stdout


async def test_while_tally_is_unreachable_the_last_four_signed_heads_stay_published(
    pipeline4: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = pipeline4
    rng = random.Random(5)
    await pipeline.random_night(rng, 16)
    assert await pipeline.cycle() is not None
    before = json.loads((pipeline.site / "suara/snapshot.json").read_bytes())
    assert len(before["chain_heads"]) == K
    stub = pipeline.publisher.tally
    assert stub is not None

    async def unreachable(*args: object, **kwargs: object) -> object:
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down")

    monkeypatch.setattr(stub, "GetChainHead", unreachable)
    await pipeline.random_night(rng, 4)
    result = await pipeline.cycle()
    assert result is not None
    after = json.loads((pipeline.site / "suara/snapshot.json").read_bytes())
    assert after["snapshot"] == result.snapshot > before["snapshot"]
    assert (after["chain_head"], after["chain_heads"]) == (before["chain_head"], before["chain_heads"])
