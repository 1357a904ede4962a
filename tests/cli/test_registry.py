"""`suara registry load` and `suara registry show`: through the real entry point in-process, and `show` as the
installed script against the test database, checked against SQL."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

import cli
from suara.registry.areas import read_areas
from suara.registry.contests import read_contests
from suara.registry.synthetic import synthetic_tps
from tests.support.databases import TEST_SCALE, TEST_SEED, with_database
from tests.support.factories import TEST_ELECTION
from tests.support.processes import run_suara

# The CLI runs its own event loop (asyncio.run), so the in-process tests are plain functions.


@pytest.fixture
def database(db_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DATABASE_URL", db_url)
    return db_url


@pytest.fixture
def nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """A database the command must not reach: it fails before connecting."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")


@pytest.fixture
def unmigrated(pg_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"suara_r_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(pg_server, f'CREATE DATABASE "{name}"'))
    monkeypatch.setenv("DATABASE_URL", with_database(pg_server, name))
    yield name
    asyncio.run(_admin(pg_server, f'DROP DATABASE "{name}" WITH (FORCE)'))


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _tps(url: str) -> list[tuple[str, int]]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await conn.fetch("SELECT code, dpt FROM registry.tps ORDER BY code")]
    finally:
        await conn.close()


def test_show_prints_what_the_registry_holds(database: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["registry", "show"]) == 0
    out = capsys.readouterr().out
    tps = synthetic_tps(read_areas(), scale=TEST_SCALE, seed=TEST_SEED)
    assert "83,762" in out and "7,285" in out and "514" in out
    assert f"tps: {len(tps):,} with {sum(t.dpt for t in tps):,} voters" in out
    for contest in read_contests():
        assert contest.id in out and f"{len(contest.choices)} choices" in out
    assert f"scale {TEST_SCALE}, seed {TEST_SEED}" in out


def test_load_replaces_the_registry_and_reports_each_phase(database: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["registry", "load", "--synthetic-tps", "--scale", "0.001", "--seed", "5"]) == 0
    tps = synthetic_tps(read_areas(), scale=0.001, seed=5)
    assert asyncio.run(_tps(database)) == [(t.code, t.dpt) for t in tps]
    captured = capsys.readouterr()
    assert f"{len(tps):,} synthetic TPS (scale 0.001, seed 5)" in captured.out
    for done in ("areas read", "TPS generated", "old rows deleted", "areas copied", "TPS copied", "committed"):
        assert done in captured.err


def test_load_without_synthetic_tps_loads_no_tps(database: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["registry", "load"]) == 0
    assert asyncio.run(_tps(database)) == []
    assert "no TPS" in capsys.readouterr().out


def test_scale_and_seed_need_synthetic_tps(nowhere: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["registry", "load", "--seed", "3"]) == 2
    assert "--synthetic-tps" in capsys.readouterr().err


@pytest.mark.parametrize("action", ["load", "show"])
def test_an_unmigrated_database_asks_for_migrate(
    unmigrated: str, action: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["registry", action]) == 2
    assert "run `suara db migrate` first" in capsys.readouterr().err


def test_a_bad_contests_file_fails_before_any_database(nowhere: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["registry", "load", "--contests", "/nonexistent/contests.toml"]) == 2
    assert "cannot read contests" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--scale", "0"), ("--scale", "1.5"), ("--scale", "abc"), ("--seed", "-1"), ("--seed", str(2**63))],
)
def test_a_scale_or_seed_out_of_range_is_a_usage_error(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["registry", "load", "--synthetic-tps", flag, value])
    assert exit_.value.code == 2 and flag in capsys.readouterr().err


def test_help_explains_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["registry", "load", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for flag, words in [
        ("--synthetic-tps", "synthetic TPS list"),
        ("--scale F", "fraction of the 823,220 TPS"),
        ("--seed N", "same scale and seed give the same list"),
        ("--contests PATH", "contests file"),
    ]:
        assert f"{flag} " in out and words in out, flag


async def test_registry_show_prints_the_tps_count(
    db: asyncpg.Connection, cli_env: dict[str, str], tmp_path: Path
) -> None:
    tps, dpt = await db.fetchrow("SELECT count(*), coalesce(sum(dpt), 0) FROM registry.tps")
    contests = await db.fetchval("SELECT count(*) FROM registry.contest")
    assert tps > 0
    result = await run_suara("registry", "show", env=cli_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"tps: {tps:,} with {dpt:,} voters (DPT)" in result.stdout.splitlines()
    assert f"contests: {contests}" in result.stdout.splitlines()


async def _election(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval("SELECT election_id FROM registry.load ORDER BY id DESC LIMIT 1"))
    finally:
        await conn.close()


def test_load_names_the_election_and_a_reload_keeps_it(database: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert asyncio.run(_election(database)) == TEST_ELECTION  # the test registry's
    assert cli.main(["registry", "load", "--election-id", "gladi-2024-01"]) == 0
    assert "election gladi-2024-01" in capsys.readouterr().out
    assert asyncio.run(_election(database)) == "gladi-2024-01"
    assert cli.main(["registry", "load"]) == 0  # a reload without a name keeps the election
    assert asyncio.run(_election(database)) == "gladi-2024-01"
    assert cli.main(["registry", "show"]) == 0
    assert "election: gladi-2024-01" in capsys.readouterr().out


@pytest.mark.usefixtures("nowhere")
def test_a_malformed_election_id_is_refused_before_the_database(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["registry", "load", "--election-id", "Pemilu 2024"]) == 2
    assert "election id 'Pemilu 2024'" in capsys.readouterr().err


def test_a_first_load_without_a_name_gets_a_random_one(unmigrated: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["db", "migrate"]) == 0
    assert cli.main(["registry", "load"]) == 0
    first = capsys.readouterr().out.rsplit("election ", 1)[1].strip()
    assert first.startswith("election-") and len(first) > len("election-")


def test_a_rehearsal_is_marked_kept_a_rehearsal_and_wiped_to_an_unmigrated_database(
    unmigrated: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SUARA_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SUARA_SITE_DIR", str(tmp_path / "site"))
    assert cli.main(["db", "migrate"]) == 0
    assert cli.main(["registry", "load", "--rehearsal", "--election-id", "gladi-cli"]) == 0
    assert "REHEARSAL gladi-cli" in capsys.readouterr().out
    assert cli.main(["registry", "load", "--election-id", "gladi-cli-2"]) == 0  # a reload keeps the kind
    assert cli.main(["registry", "show"]) == 0
    assert "election: gladi-cli-2 (rehearsal: published as SIMULASI)" in capsys.readouterr().out
    assert cli.main(["rehearsal", "wipe", "--election-id", "gladi-cli"]) == 2  # the old id: not this one
    assert "holds rehearsal 'gladi-cli-2', not 'gladi-cli'" in capsys.readouterr().err
    assert cli.main(["rehearsal", "wipe", "--election-id", "gladi-cli-2"]) == 1  # without --yes: says only
    assert "would erase rehearsal 'gladi-cli-2'" in capsys.readouterr().out
    assert asyncio.run(_election(os.environ["DATABASE_URL"])) == "gladi-cli-2"
    assert cli.main(["rehearsal", "wipe", "--election-id", "gladi-cli-2", "--yes"]) == 0
    assert "wiped rehearsal 'gladi-cli-2'" in capsys.readouterr().out
    assert cli.main(["rehearsal", "wipe", "--election-id", "gladi-cli-2", "--yes"]) == 2  # nothing left
    # As before `suara db migrate`: the same database takes the migrations and a real election again.
    assert cli.main(["db", "migrate"]) == 0
    assert cli.main(["registry", "load", "--election-id", "pemilu-cli"]) == 0
    assert "election pemilu-cli" in capsys.readouterr().out


def test_a_real_election_never_becomes_a_rehearsal(database: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["registry", "load", "--rehearsal", "--election-id", "gladi-2024-01"]) == 2
    assert "a real election's database never becomes a rehearsal" in capsys.readouterr().err
    assert cli.main(["rehearsal", "wipe", "--election-id", TEST_ELECTION, "--yes"]) == 2
    assert "is a real election, not a rehearsal" in capsys.readouterr().err
    assert asyncio.run(_election(database)) == TEST_ELECTION


def test_a_shape_loads_the_whole_election_and_show_lists_its_districts(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["registry", "load", "--shape", "pemilu2024", "--synthetic-tps", "--scale", "0.001", "--seed", "2"]
    assert cli.main(args) == 0
    loaded = capsys.readouterr().out
    districts = asyncio.run(_fetchval(database, "SELECT count(*) FROM registry.district"))
    assert f"in {districts:,} districts" in loaded and "7 contests" in loaded
    assert cli.main(["registry", "show"]) == 0
    shown = capsys.readouterr().out
    assert "84 districts" in shown and "508 districts" in shown and "37 districts" in shown


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shape", "/nonexistent/shape"], "neither pemilu2024 nor a directory"),
        (["--shape", "pemilu2024", "--contests", "x.toml"], "leave out --contests"),
    ],
)
def test_a_bad_shape_fails_before_any_database(
    nowhere: None, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["registry", "load", *args]) == 2
    assert message in capsys.readouterr().err


async def _fetchval(url: str, sql: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()
