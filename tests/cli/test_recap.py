"""`suara recap` as a PPK runs it: fetch while online, then offline compile, enter, sign and queue;
reconnect, send, and watch the recap reconcile on the site and at aggregate.

Real tally, aggregate and publisher (tests/support/publish.py's pipeline) over real PostgreSQL; the
`suara` command as its own process. The oracle is the pipeline's record of what tally acknowledged
(every TPS's form as signed) and the numbers the test reads out in the plenary.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from suara.client.outbox import Outbox
from suara.client.recap import recap_of
from suara.election.form import administrasi_of
from suara.election.signing import OfficialKey
from tests.support.ports import closed_port
from tests.support.processes import SUARA, run_suara, suara_env
from tests.support.publish import Pipeline

SCALARS = ("suara_sah", "suara_tidak_sah", "suara_total", "dpt", "pengguna")


async def kecamatan(db: asyncpg.Connection) -> tuple[str, list[str]]:
    row = await db.fetchrow(
        "SELECT left(code, 6) AS k, array_agg(code ORDER BY code) AS tps FROM registry.tps"
        " GROUP BY 1 HAVING count(*) >= 3 ORDER BY 1 LIMIT 1"
    )
    return row["k"], list(row["tps"])


def digital_of(pipeline: Pipeline, tps: str) -> dict[str, int]:
    """The oracle's numbers of a TPS: its acknowledged form as the device signed it."""
    form = pipeline.current[(tps, "ppwp")].form
    counts = {c: form.votes[c] for c in pipeline.choices["ppwp"]}
    admin = administrasi_of(form)
    counts.update(
        suara_sah=form.suara_sah,
        suara_tidak_sah=form.suara_tidak_sah,
        suara_total=form.suara_total,
        dpt=admin["pemilih_dpt_j"],
        pengguna=admin["pengguna_total_j"],
    )
    return counts


def write_paper(path: Path, paper: dict[str, dict[str, int]], choices: list[str]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["kode", *choices, *SCALARS])
        for code, counts in paper.items():
            writer.writerow([code, *(f"{counts[c]:,}" for c in choices), *(counts[s] for s in SCALARS)])


async def suara_ok(*args: str, env: dict[str, str], cwd: Path, code: int = 0) -> str:
    result = await run_suara(*args, env=env, cwd=cwd)
    assert result.returncode == code, f"{args}: {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


async def test_a_ppk_recaps_offline_then_the_recap_is_sent_and_reconciled(
    pipeline: Pipeline, cli_env: dict[str, str], tmp_path: Path
) -> None:
    area, tps = await kecamatan(pipeline.db)
    choices = pipeline.choices["ppwp"]
    for code in tps:
        await pipeline.submit(code, "ppwp", 1, seed=3)
    await pipeline.cycle()
    key_file = tmp_path / "ppk.key.json"
    await suara_ok("official", "enroll", "--area", area, "--role", "ppk", "--out", str(key_file), env=cli_env,
                   cwd=tmp_path)  # fmt: skip
    key = ["--key", str(key_file)]

    # Online, before the plenary: the area from the public site.
    fetched = await suara_ok("recap", "fetch", *key, "--site", str(pipeline.site), env=cli_env, cwd=tmp_path)
    assert f"{len(tps)} units, {len(tps)} of {len(tps)} TPS counted digitally" in fetched

    # Offline from here. The plenary reads out every TPS; on one the paper has 3 more votes for a choice.
    off = tps[1]
    paper = {code: digital_of(pipeline, code) for code in tps}
    paper[off][choices[0]] += 3
    paper[off]["suara_sah"] += 3
    paper[off]["suara_total"] += 3
    template = tmp_path / "sheet.csv"
    await suara_ok("recap", "sheet-template", *key, "--out", str(template), env=cli_env, cwd=tmp_path)
    assert [r["kode"] for r in csv.DictReader(template.open())] == tps
    before = json.loads(await suara_ok("recap", "show", *key, "--json", env=cli_env, cwd=tmp_path))
    assert before["recap"] is None and before["missing_paper"] == tps

    sheet = tmp_path / "paper.csv"
    write_paper(sheet, paper, choices)
    entered = await suara_ok("recap", "enter", *key, "--file", str(sheet), env=cli_env, cwd=tmp_path)
    assert f"{len(tps)} of {len(tps)} entered" in entered
    shown = json.loads(await suara_ok("recap", "show", *key, "--json", env=cli_env, cwd=tmp_path))
    expected_recap = {f"votes[{c}]" if c in choices else c: sum(p[c] for p in paper.values()) for c in paper[off]}
    assert shown["recap"] == expected_recap
    assert shown["differences"] == {
        off: [
            {"field": f"votes[{choices[0]}]", "paper": paper[off][choices[0]], "digital": paper[off][choices[0]] - 3},
            {"field": "suara_sah", "paper": paper[off]["suara_sah"], "digital": paper[off]["suara_sah"] - 3},
            {"field": "suara_total", "paper": paper[off]["suara_total"], "digital": paper[off]["suara_total"] - 3},
        ]
    }

    offline = ["--target", f"127.0.0.1:{closed_port()}", "--timeout", "3"]
    signed = await suara_ok("recap", "sign", *key, *offline, env=cli_env, cwd=tmp_path, code=3)
    assert f"recap of area {area} ppwp v1 signed and saved in the outbox" in signed
    assert "safe in the outbox" in signed
    queued = json.loads(await suara_ok("recap", "status", *key, "--json", env=cli_env, cwd=tmp_path))
    assert [(e["version"], e["state"], e["last_code"]) for e in queued["outbox"]] == [(1, "pending", "UNAVAILABLE")]
    assert await pipeline.db.fetchval("SELECT count(*) FROM aggregate.recap") == 0

    # The network is back.
    online = ["--target", f"127.0.0.1:{pipeline.aggregate.port}"]
    sent = await suara_ok("recap", "send", *online, env=cli_env, cwd=tmp_path)
    assert f"sent recap of area {area} ppwp v1: ACCEPTED" in sent
    early = await suara_ok("recap", "status", *key, "--site", str(pipeline.site), env=cli_env, cwd=tmp_path)
    assert "NO_RECAP" in early and "v1 was sent but site shows v0 yet" in early  # publish has not run since
    await pipeline.cycle()
    reader = suite_reader()
    status = ["--site", str(pipeline.site), "--reader-target", f"127.0.0.1:{pipeline.aggregate.internal_port}",
              "--credential", str(reader)]  # fmt: skip
    after = json.loads(await suara_ok("recap", "status", *key, *status, "--json", env=cli_env, cwd=tmp_path))
    # recap − digital: the 3 votes the paper has more, on the area's totals.
    expected = sorted(
        ({"field": f, "recap": expected_recap[f], "digital": expected_recap[f] - 3, "difference": 3}
         for f in (f"votes[{choices[0]}]", "suara_sah", "suara_total")),
        key=lambda d: str(d["field"]),
    )  # fmt: skip
    assert after["aggregate"]["status"] == after["site"]["status"] == "MISMATCH"
    assert after["aggregate"]["recap_version"] == after["site"]["recap_version"] == 1
    assert sorted(after["aggregate"]["differences"], key=lambda d: d["field"]) == expected
    assert sorted(after["site"]["differences"], key=lambda d: d["field"]) == expected
    assert after["aggregate"]["mismatches_under"] == [area]

    # The plenary opens the box again: the paper was misread, the digital form was right. A correction.
    await suara_ok("recap", "enter", *key, "--file", str(write_one(tmp_path, off, digital_of(pipeline, off), choices)),
                   env=cli_env, cwd=tmp_path)  # fmt: skip
    corrected = await suara_ok("recap", "sign", *key, *online, env=cli_env, cwd=tmp_path)
    assert f"sent recap of area {area} ppwp v2: ACCEPTED" in corrected
    again = await suara_ok("recap", "sign", *key, *online, env=cli_env, cwd=tmp_path)  # signing twice: no v3
    assert "ppwp v2 already signed" in again and "already sent: ACCEPTED" in again
    await pipeline.cycle()
    final = json.loads(await suara_ok("recap", "status", *key, *status, "--json", env=cli_env, cwd=tmp_path))
    assert final["aggregate"]["status"] == final["site"]["status"] == "MATCH"
    assert final["aggregate"]["differences"] == final["site"]["differences"] == []
    assert [(e["version"], e["state"], e["outcome"]) for e in final["outbox"]] == [
        (1, "sent", "ACCEPTED"),
        (2, "sent", "ACCEPTED"),
    ]
    text = await suara_ok("recap", "status", *key, *status, env=cli_env, cwd=tmp_path)
    assert "MATCH, recap v2: the recap equals the digital count" in text
    assert await pipeline.db.fetchval("SELECT count(*) FROM aggregate.recap") == 2


def write_one(tmp_path: Path, code: str, counts: dict[str, int], choices: list[str]) -> Path:
    path = tmp_path / f"{code}.csv"
    write_paper(path, {code: counts}, choices)
    return path


def suite_reader() -> Path:
    from tests.support.pki import suite_pki

    return suite_pki().bundle("recap-status", "reader")


async def test_a_send_killed_while_waiting_for_the_network_loses_nothing(
    pipeline: Pipeline, cli_env: dict[str, str], tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    area, tps = await kecamatan(pipeline.db)
    for code in tps:
        await pipeline.submit(code, "ppwp", 1)
    await pipeline.cycle()
    key_file = tmp_path / "ppk.key.json"
    await suara_ok("official", "enroll", "--area", area, "--role", "ppk", "--out", str(key_file), env=cli_env,
                   cwd=tmp_path)  # fmt: skip
    key = ["--key", str(key_file)]
    reader = ["--reader-target", f"127.0.0.1:{pipeline.aggregate.internal_port}", "--credential", str(suite_reader())]
    fetched = await suara_ok("recap", "fetch", *key, *reader, "--site", str(pipeline.site), env=cli_env, cwd=tmp_path)
    assert f"{len(tps)} of {len(tps)} TPS counted digitally (aggregate sequence" in fetched
    sheet = tmp_path / "paper.csv"
    write_paper(sheet, {code: digital_of(pipeline, code) for code in tps}, pipeline.choices["ppwp"])
    await suara_ok("recap", "enter", *key, "--file", str(sheet), env=cli_env, cwd=tmp_path)
    await suara_ok("recap", "sign", *key, "--offline", env=cli_env, cwd=tmp_path, code=3)

    # `suara recap send` retrying against a dead network, killed outright (battery out) mid-wait.
    proc = await asyncio.create_subprocess_exec(
        str(SUARA), "recap", "send", "--target", f"127.0.0.1:{closed_port()}", "--deadline", "600",
        env=cli_env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    line = await asyncio.wait_for(proc.stderr.readline(), 60)
    assert b"retrying in" in line  # it has tried and is waiting to try again
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()

    sent = await suara_ok("recap", "send", "--target", f"127.0.0.1:{pipeline.aggregate.port}", env=cli_env,
                          cwd=tmp_path)  # fmt: skip
    assert f"sent recap of area {area} ppwp v1: ACCEPTED" in sent
    async with await Outbox.open(Path(cli_env["SUARA_DATA_DIR"]) / "recap" / "outbox.sqlite3", "recap") as outbox:
        (entry,) = await outbox.entries()
    assert entry.attempts >= 2 and entry.state == "sent"
    stored = await pipeline.db.fetch("SELECT payload FROM aggregate.recap")
    record_property(
        "figures",
        {
            "recaps signed": 1,
            "signed recaps lost": 0 if entry.payload in [bytes(r["payload"]) for r in stored] else 1,
            "recaps stored twice": len(stored) - len({bytes(r["payload"]) for r in stored}),
            "attempts": entry.attempts,
        },
    )
    assert [bytes(r["payload"]) for r in stored] == [entry.payload]
    assert OfficialKey.load(key_file).official_id == entry.device_id
    await pipeline.cycle()
    status = json.loads(
        await suara_ok("recap", "status", *key, "--site", str(pipeline.site), "--json", env=cli_env, cwd=tmp_path)
    )
    assert status["site"]["status"] == "MATCH"


async def test_entering_numbers_by_hand_names_each_field_and_keeps_each_unit(tmp_path: Path) -> None:
    """Interactive entry, no server at all: a snapshot on disk is all it needs."""
    key = OfficialKey.generate("310101", "ppk", "pemilu-2024")
    key.save(tmp_path / "ppk.key.json")
    recap_dir = tmp_path / "recap"
    recap_dir.mkdir()
    digital = {"votes[1]": 10, "votes[2]": 5, "suara_sah": 15, "suara_tidak_sah": 1, "suara_total": 16, "dpt": 30,
               "pengguna": 16}  # fmt: skip
    snapshot = {
        "format": "suara-recap-snapshot", "area": "310101", "contest": "ppwp", "name": "KEC", "source": "t",
        "fetched_at": "t",
        "choices": [{"id": "1", "nama": "A", "nomor_urut": 1}, {"id": "2", "nama": "B", "nomor_urut": 2}],
        "units": [{"code": c, "name": f"TPS {c[-3:]}", "digital": digital, "tps_total": 1, "tps_reported": 1,
                   "tps_quarantined": 0} for c in ("3101011001001", "3101011001002", "3101011001003")],
    }  # fmt: skip
    (recap_dir / "310101-ppwp.snapshot.json").write_text(json.dumps(snapshot))
    # Unit 1: the paper agrees. Unit 2: typed, with a typo and thousands separators. Then the official stops.
    typed = "y\nn\n12\n5x\n5\n17\n1\n18\n1.030\n18\nq\n"
    env = suara_env(SUARA_DATA_DIR=tmp_path / "state")
    proc = await asyncio.create_subprocess_exec(
        str(SUARA), "recap", "enter", "--key", str(tmp_path / "ppk.key.json"), "--dir", str(recap_dir),
        env=env, cwd=tmp_path, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(typed.encode()), 60)
    assert proc.returncode == 0, err.decode()
    said = out.decode()
    assert "2. B (votes[2]): '5x' is not a whole number; type the number as written on the paper" in said
    assert "2 of 3 units entered" in said
    paper = json.loads((recap_dir / "310101-ppwp.paper.json").read_text())["units"]
    assert paper == {
        "3101011001001": digital,
        "3101011001002": {"votes[1]": 12, "votes[2]": 5, "suara_sah": 17, "suara_tidak_sah": 1, "suara_total": 18,
                          "dpt": 1030, "pengguna": 18},
    }  # fmt: skip

    # A file with mistakes: nothing is taken, and every mistake is named by unit and field.
    bad = tmp_path / "bad.csv"
    bad.write_text("kode,1,2,suara_sah,suara_tidak_sah,suara_total,dpt\n3101011001003,4,x,4,0,4,9\n9999,1,1,1,1,1,1\n")
    result = await run_suara("recap", "enter", "--key", str(tmp_path / "ppk.key.json"), "--dir", str(recap_dir),
                             "--file", str(bad), env=env, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert "3101011001003.votes[2]: 'x' is not a whole number" in result.stderr
    assert "3101011001003.pengguna: missing" in result.stderr
    assert "9999: not a unit of 310101" in result.stderr
    assert json.loads((recap_dir / "310101-ppwp.paper.json").read_text())["units"] == paper

    refused = await run_suara("recap", "sign", "--key", str(tmp_path / "ppk.key.json"), "--dir", str(recap_dir),
                              "--offline", env=env, cwd=tmp_path)  # fmt: skip
    assert refused.returncode == 2 and "1 unit(s) have no paper numbers yet (3101011001003)" in refused.stderr

    # The last unit entered; a laptop with no network settings at all still signs and keeps the recap.
    await asyncio.to_thread((tmp_path / "last.json").write_text, json.dumps({"3101011001003": digital}))
    await run_suara("recap", "enter", "--key", str(tmp_path / "ppk.key.json"), "--dir", str(recap_dir),
                    "--file", str(tmp_path / "last.json"), env=env, cwd=tmp_path)  # fmt: skip
    bare = {k: v for k, v in env.items() if k != "SUARA_CA_FILE"}
    kept = await run_suara("recap", "sign", "--key", str(tmp_path / "ppk.key.json"), "--dir", str(recap_dir),
                           env=bare, cwd=tmp_path)  # fmt: skip
    assert kept.returncode == 3, kept.stderr
    assert "v1 signed and saved in the outbox" in kept.stdout and "not sent (SUARA_CA_FILE" in kept.stdout
    async with await Outbox.open(recap_dir / "outbox.sqlite3", "recap") as outbox:
        (entry,) = await outbox.pending()
    assert recap_of(entry).totals.suara_sah == 15 + 17 + 15 and recap_of(entry).election_id == "pemilu-2024"
    # The device's `suara outbox` refuses an official's outbox, naming the command that sends it.
    wrong = await run_suara("outbox", "status", "--outbox", str(recap_dir / "outbox.sqlite3"), env=env, cwd=tmp_path)
    assert wrong.returncode == 2 and "recap official's outbox of recaps" in wrong.stderr
    assert "suara recap status" in wrong.stderr


@pytest.mark.parametrize("action", ["fetch", "show", "enter", "sheet-template", "sign", "send", "status"])
async def test_every_action_explains_itself(action: str, tmp_path: Path) -> None:
    result = await run_suara("recap", action, "--help", env=suara_env(), cwd=tmp_path)
    assert result.returncode == 0 and "--dir" in result.stdout and len(result.stdout) > 400


async def test_fetch_of_a_kabupaten_sums_each_kecamatan_from_its_tps_as_aggregate_counts(pipeline: Pipeline) -> None:
    """A KPU kabupaten/kota's units are its kecamatan. Quarantined TPS and TPS without a form count nothing."""
    from cli.recap_fetch import read_sheet, read_sheet_from_aggregate
    from suara.site.audit import site_reader

    kabupaten = await pipeline.db.fetchval(  # the smallest with two kecamatan, one of them of 3 TPS or more
        "SELECT k FROM (SELECT left(code, 4) AS k, left(code, 6), count(*) AS n FROM registry.tps GROUP BY 1, 2) x"
        " GROUP BY k HAVING count(*) >= 2 AND max(n) >= 3 ORDER BY sum(n), k LIMIT 1"
    )
    tps = [r["code"] for r in await pipeline.db.fetch(
        "SELECT code FROM registry.tps WHERE code LIKE $1 || '%' ORDER BY code", kabupaten)]  # fmt: skip
    quarantined, silent = tps[0], tps[-1]
    for i, code in enumerate(tps):
        if code != silent:
            await pipeline.submit(code, "ppwp", 1, seed=i, quarantined=code == quarantined)
    await pipeline.cycle()

    sheet = await asyncio.to_thread(read_sheet, site_reader(str(pipeline.site)), "test", "ppwp", kabupaten)
    kecamatan = sorted({code[:6] for code in tps})
    assert [u.code for u in sheet.units] == kecamatan
    for unit in sheet.units:
        under = [c for c in tps if c.startswith(unit.code)]
        counted = [c for c in under if c not in (quarantined, silent)]
        expected: dict[str, int] = {}
        for code in counted:
            for name, value in digital_of(pipeline, code).items():
                field = f"votes[{name}]" if name in pipeline.choices["ppwp"] else name
                expected[field] = expected.get(field, 0) + value
        assert unit.digital == (expected or None), unit.code
        assert (unit.tps_total, unit.tps_reported) == (len(under), len(counted))
        assert unit.tps_quarantined == (quarantined in under)
    assert [c.id for c in sheet.choices] == pipeline.choices["ppwp"]
    assert sheet.reconciliation is not None and sheet.reconciliation["status"] == "NO_RECAP"

    # aggregate's read of the same area agrees unit for unit; so does a kecamatan's, TPS by TPS.
    biggest = max(kecamatan, key=lambda k: sum(c.startswith(k) for c in tps))
    for code in (kabupaten, biggest):
        from_site = await asyncio.to_thread(read_sheet, site_reader(str(pipeline.site)), "test", "ppwp", code)
        from_aggregate = await read_sheet_from_aggregate(pipeline.channel, "test", "ppwp", code, sheet.choices)
        assert from_aggregate.units == from_site.units and len(from_site.units) > 1
        assert from_aggregate.choices == from_site.choices and from_aggregate.name == from_site.name
        assert from_aggregate.reconciliation == from_site.reconciliation
    unnamed = await read_sheet_from_aggregate(pipeline.channel, "test", "ppwp", kabupaten)
    assert sorted(c.id for c in unnamed.choices) == sorted(pipeline.choices["ppwp"])
