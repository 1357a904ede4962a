"""The load test against the real pipeline (tally + relay + aggregate + publish, in-process), and its parts.

The end-to-end tests run `run_loadtest` at a small scale against a site a publisher keeps writing,
so what they prove is the load test's own contract: it drives every fault, its oracle agrees with a
correct system, and it catches a published number that is wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import json
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cli import loadtest as loadtest_cli
from loadtest import verify as verify_module
from loadtest.config import STANDARD, Config
from loadtest.devices import EnrollError, enroll
from loadtest.errors import LoadTestError
from loadtest.forms import administrasi, make_form, numbers
from loadtest.freshness import freshness
from loadtest.oracle import Oracle
from loadtest.plan import FAULTS, make_plan, sample_tps
from loadtest.report import human_table, write_report
from loadtest.run import run_loadtest
from loadtest.site import HttpSite
from loadtest.verify import Mismatch, Verification, verify
from services.publish.http import serve_site
from suara.election.checks import find_inconsistencies, find_malformed
from suara.election.contest import Choice, Contest
from suara.runtime.settings import Settings
from suara.site import paths
from suara.v1 import form_pb2
from tests.support.pki import suite_pki
from tests.support.publish import Pipeline


@dataclass
class System:
    pipeline: Pipeline
    config: Config
    admin: Path  # the admin's certificate and key (one PEM file)


@pytest.fixture
async def system(pipeline: Pipeline) -> AsyncIterator[System]:
    """The pipeline with an admin credential and a publisher cycling every 0.2 s, as `suara publish run` would."""
    pki = suite_pki()
    admin = pki.bundle("loadtest-admin", "admin")

    async def publish_loop() -> None:
        while True:
            await pipeline.publisher.cycle()
            await asyncio.sleep(0.2)  # publish's interval: a periodic loop, nothing to await

    task = asyncio.create_task(publish_loop())
    config = Config(
        target=f"127.0.0.1:{pipeline.tally.app.port}",
        admin_target=f"127.0.0.1:{pipeline.tally.app.internal_port}",
        tls=pki.client_tls(),
        admin_tls=pki.client_tls(pki.credential("loadtest-admin", "admin")),
        admin_token="",
        site=str(pipeline.site),
        scale=0.08,
        concurrency=8,
        seed=11,
        sample_interval_s=0.2,
        settle_s=1.0,
        settle_timeout_s=120.0,
        snapshot_timeout_s=120.0,
    )
    try:
        yield System(pipeline, config, admin)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("cycle_changes", [None, 15], ids=["one-cycle-per-backlog", "a-backlog-over-many-cycles"])
async def test_a_small_night_with_standard_faults_is_exact(
    system: System, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cycle_changes: int | None
) -> None:
    if cycle_changes is not None:  # the national file runs ahead of the deeper files until caught_up
        from services.publish import cycle

        monkeypatch.setattr(cycle, "CYCLE_CHANGES", cycle_changes)
    report = await run_loadtest(system.config)
    write_report(report, tmp_path / "report.json")
    print(human_table(report))  # shown with -s: the table a run ends with
    v = report["verification"]
    assert v["exact"], (v["mismatches"], v["chain_problems"])
    assert v["areas_checked"] > 0 and v["tps_checked"] > 0
    assert v["chain_heads"] > 0 and v["chain_problems"] == []  # `suara audit site`'s checks, on every head
    # Every fault of the standard profile showed up as tally's answer.
    assert {"ACCEPTED", "DUPLICATE", "SUPERSEDED", "QUARANTINED"} <= set(report["outcomes"])
    assert report["errors"].get("INVALID_ARGUMENT", 0) >= 1
    assert set(report["plan"]["faults"]) == set(FAULTS)
    assert report["throughput"]["submissions_per_s"] > 0
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p95"] <= report["latency_ms"]["p99"]
    assert report["freshness_s"]["measured"] > 0 and report["freshness_s"]["p50"] >= 0
    # The oracle's counted TPS are what the published national files say.
    for contest, oracle in report["oracle"].items():
        national = json.loads((system.pipeline.site / f"pemilu/hhcw/{contest}.json").read_bytes())
        assert national["progres"]["progres"] == oracle["counted"]


async def test_forms_sent_with_photos_publish_them_whatever_the_faults(system: System) -> None:
    """--photos: a share of the TPS send their form's three photos, through every fault (a lost reply, an
    offline outbox, a correction); what tally holds as current is what the site shows."""
    config = replace(system.config, contests=["ppwp"], scale=0.03, photos=0.5)
    report = await run_loadtest(config)
    assert report["verification"]["exact"], report["verification"]["mismatches"]
    rows = await system.pipeline.db.fetch(
        "SELECT s.tps, s.payload FROM tally.current c JOIN tally.submission s ON s.id = c.submission_id"
        " WHERE s.contest = 'ppwp'"
    )
    photographed = 0
    for row in rows:
        shas = list(form_pb2.CHasilForm.FromString(bytes(row["payload"])).photo_sha256)
        assert len(shas) in (0, 3), row["tps"]
        photographed += bool(shas)
        rel = "/".join(row["tps"][:n] for n in (2, 4, 6, 10, 13))
        tps_file = json.loads((system.pipeline.site / f"pemilu/hhcw/ppwp/{rel}.json").read_bytes())
        assert tps_file["images"] == [f"/foto/{sha[:2]}/{sha}.jpg" for sha in shas] + [None] * (3 - len(shas))
        for sha in shas:
            body = (system.pipeline.site / f"foto/{sha[:2]}/{sha}.jpg").read_bytes()
            assert hashlib.sha256(body).hexdigest() == sha
    assert 0.2 * len(rows) <= photographed <= 0.8 * len(rows), (photographed, len(rows))


async def test_a_corrupted_totals_file_is_a_mismatch(
    system: System, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the CLI: one published kecamatan file says one vote more than it should once the night is
    over; the report names that file and field, is not exact, and the exit status is 1."""
    site = system.pipeline.site
    corrupted: dict[str, str] = {}

    async def corrupt_then_verify(*args: Any, **kwargs: Any) -> Verification:
        # The site has settled (nothing more to publish, so the publisher leaves it alone): corrupt one file.
        for path in sorted(site.glob("pemilu/hhcw/ppwp/*/*/*.json")):
            doc = json.loads(path.read_bytes())
            if doc["progres"]["progres"]:
                doc["chart"]["100025"] += 1
                path.write_text(json.dumps(doc))
                corrupted["path"] = str(path.relative_to(site))
                break
        return await verify(*args, **kwargs)

    monkeypatch.setattr("loadtest.run.verify", corrupt_then_verify)
    admin_key = system.admin
    parser = argparse.ArgumentParser()
    loadtest_cli.add_parser(parser.add_subparsers())
    argv = f"loadtest --target {system.config.target} --admin-target {system.config.admin_target}"
    argv += f" --admin-key {admin_key} --ca {suite_pki().ca} --site {site} --scale 0.05"
    argv += f" --contests ppwp --faults none --seed 3 --report {tmp_path / 'report.json'}"
    args = parser.parse_args(argv.split())
    status = await args.handler(args, Settings())
    v = json.loads((tmp_path / "report.json").read_bytes())["verification"]
    assert corrupted, "no kecamatan had counted TPS"
    assert status == loadtest_cli.EXIT_MISMATCH
    assert not v["exact"]
    assert v["mismatch_count"] == 1
    (m,) = v["mismatches"]
    assert (m["path"], m["field"], m["got"]) == (corrupted["path"], "chart.100025", m["want"] + 1)


async def test_a_tampered_chain_head_fails_verification_however_the_site_is_read(
    system: System, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the CLI: once the night is over, one history entry's signed head has one hex digit of its
    hash changed. Every number is still exact, yet verification (from the directory, and over HTTP)
    fails naming that file, as `suara audit site` would, and the exit status is 1."""
    site = system.pipeline.site
    found: dict[str, Any] = {}

    async def tamper_then_verify(*args: Any, **kwargs: Any) -> Verification:
        found["before"] = await verify(*args, **kwargs)
        index = json.loads((site / paths.history_index_path("ppwp")).read_bytes())
        for item in reversed(index):
            where = paths.history_path("ppwp", item["snapshot"])
            entry = json.loads((site / where).read_bytes())
            if entry.get("chain_head"):
                digest = entry["chain_head"]["hash"]
                entry["chain_head"]["hash"] = ("1" if digest[0] == "0" else "0") + digest[1:]
                data = json.dumps(entry).encode()
                (site / where).write_bytes(data)
                gz = site / (where + ".gz")  # what the HTTP server sends a client that takes gzip
                if gz.exists():
                    gz.write_bytes(gzip.compress(data))
                found["where"] = where
                break
        async with serve_site(site) as url:
            http = HttpSite(url)
            try:
                found["http"] = await verify(http, *args[1:], **kwargs)
            finally:
                await http.close()
        return await verify(*args, **kwargs)

    monkeypatch.setattr("loadtest.run.verify", tamper_then_verify)
    parser = argparse.ArgumentParser()
    loadtest_cli.add_parser(parser.add_subparsers())
    argv = f"loadtest --target {system.config.target} --admin-target {system.config.admin_target}"
    argv += f" --admin-key {system.admin} --ca {suite_pki().ca} --site {site} --scale 0.05"
    argv += f" --contests ppwp --faults none --seed 5 --report {tmp_path / 'report.json'}"
    args = parser.parse_args(argv.split())
    status = await args.handler(args, Settings())
    before = found["before"]
    assert before.exact and before.chain_heads > 0 and before.chain_problems == [], before.chain_problems
    assert "where" in found, "no history entry carried a signed head"
    v = json.loads((tmp_path / "report.json").read_bytes())["verification"]
    over_http = found["http"].to_json()
    for how, got in (("directory", v), ("http", over_http)):
        assert got["mismatch_count"] == 0, how  # every number is still right
        assert not got["exact"], how
        assert got["chain_heads"] == before.chain_heads - 1, how
        (problem,) = got["chain_problems"]
        assert problem.startswith(f"{found['where']}: ") and "not validly signed" in problem, (how, problem)
    assert status == loadtest_cli.EXIT_MISMATCH


async def test_one_changed_number_in_a_tps_file_and_a_totals_file_is_found_however_the_site_is_read(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the night is over: one TPS file's administrasi and one province's chart say one more than
    published, and a desa file is wrong until the recheck (publish one cycle behind). Read from the
    directory by forked processes, by a thread, and over HTTP, verification names exactly the two
    changed numbers, each with the value the settled site had published (it was exact before)."""
    site = system.pipeline.site
    results: dict[str, Verification] = {}

    def load(path: Path) -> Any:
        return json.loads(path.read_bytes())

    def write(path: Path, data: bytes) -> None:
        path.write_bytes(data)
        gz = path.with_name(path.name + ".gz")  # what the HTTP server sends a client that takes gzip
        if gz.exists():
            gz.write_bytes(gzip.compress(data))

    lagging: dict[Path, bytes] = {}  # the desa file, as published

    async def restore_then_recheck(*args: Any) -> list[Any]:
        for path, data in lagging.items():
            write(path, data)  # publish caught up during the wait
        rechecked.append(len(lagging))
        return await real_recheck(*args)

    rechecked: list[int] = []
    real_recheck = verify_module.recheck
    monkeypatch.setattr(verify_module, "recheck", restore_then_recheck)

    async def change_then_verify(*args: Any, **kwargs: Any) -> Verification:
        results["before"] = await verify(*args, **kwargs)
        tps_path = next(p for p in sorted(site.glob("pemilu/hhcw/ppwp/*/*/*/*/*.json")) if load(p)["administrasi"])
        province = next(p for p in sorted(site.glob("pemilu/hhcw/ppwp/*.json")) if load(p)["progres"]["progres"])
        desa = next(p for p in sorted(site.glob("pemilu/hhcw/ppwp/*/*/*/*.json")) if load(p)["progres"]["progres"])
        choice = next(c for c in sorted(load(province)["chart"]) if c != "persen")
        lagging[desa] = desa.read_bytes()
        for path, change in ((tps_path, ("administrasi", "pengguna_total_p")), (province, ("chart", choice))):
            doc = load(path)
            want[str(path.relative_to(site))] = (".".join(change), doc[change[0]][change[1]])
            doc[change[0]][change[1]] += 1
            write(path, json.dumps(doc).encode())
        for mode in ("forked", "thread", "http"):
            doc = load(desa)
            doc["progres"]["total"] += 1
            write(desa, json.dumps(doc).encode())
            if mode == "http":
                async with serve_site(site) as url:
                    http = HttpSite(url)
                    try:
                        results[mode] = await verify(http, *args[1:], **kwargs)
                    finally:
                        await http.close()
            else:
                results[mode] = await verify(*args, **kwargs, processes=2 if mode == "forked" else 1)
        return results["forked"]

    want: dict[str, tuple[str, int]] = {}
    monkeypatch.setattr("loadtest.run.verify", change_then_verify)
    report = await run_loadtest(replace(system.config, faults="none", contests=["ppwp"], scale=0.1))
    assert results["before"].exact, results["before"].mismatches
    expected = [Mismatch(path, name, value + 1, value) for path, (name, value) in sorted(want.items())]
    for mode in ("forked", "thread", "http"):
        v = results[mode]
        assert (v.exact, v.mismatch_count, v.mismatches) == (False, 2, expected), mode
        assert (v.areas_checked, v.tps_checked) == (results["before"].areas_checked, results["before"].tps_checked)
    # Each verification rechecked twice (the changed files still differ after the first round), and the
    # lagging file, restored before the first recheck, was not reported.
    assert len(rechecked) == 3 * system.config.recheck_rounds == 6
    assert report["verification"]["mismatch_count"] == 2


async def test_enrolling_stops_at_the_first_run_tally_refuses(system: System) -> None:
    """Keys are generated while earlier runs are enrolled: a refused run (a TPS tally does not know)
    ends the enrollment with EnrollError, and nothing is left running."""
    known = system.pipeline.all_tps[:2_500]
    admin_target, admin_tls = system.config.admin_target, system.config.admin_tls
    assert len(known) > 1_000  # more than one run of keys
    with pytest.raises(EnrollError, match="9999999999999"):
        await enroll(admin_target, "", [*known, "9999999999999"], tls=admin_tls, concurrency=2)
    with pytest.raises(EnrollError, match=r"UNAUTHENTICATED|PERMISSION_DENIED"):  # a device's TLS: no certificate
        await enroll(system.config.target, "", known[:10], tls=system.config.tls)
    assert not [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "").startswith("enroll.")]
    done = await enroll(admin_target, "", known, tls=admin_tls, concurrency=2)
    assert list(done.keys) == known
    assert done.keygen_s > 0 and done.enroll_s > 0


async def test_an_election_with_forms_already_is_refused(system: System) -> None:
    first = replace(system.config, faults="none", contests=["ppwp"], scale=0.02)
    assert (await run_loadtest(first))["verification"]["exact"]
    with pytest.raises(LoadTestError, match="already holds forms"):
        await run_loadtest(first)


# --- the plan -------------------------------------------------------------------------------------------


def _held(n: int, contests: tuple[str, ...] = ("ppwp", "pdpr")) -> dict[str, list[str]]:
    return {f"31710{i:05d}{i % 1000:03d}"[:13]: list(contests) for i in range(n)}


def test_the_arrival_curve_rises_peaks_early_and_has_a_tail() -> None:
    plan = make_plan(_held(20_000), STANDARD, seed=3)
    stations = [j.at for j in plan.jobs if j.kind == "station"]
    deciles = Counter(min(9, int(at * 10)) for at in stations)
    peak = max(deciles, key=lambda d: deciles[d])
    assert peak in (1, 2)  # Beta(2, 5): the mode is at 0.2
    assert deciles[0] < deciles[peak] and deciles[9] < deciles[0]
    assert deciles[5] < deciles[peak]  # a long tail, thinning out
    assert all(0 <= at <= 1 for at in stations)
    assert [j.at for j in plan.jobs] == sorted(j.at for j in plan.jobs)


def test_fault_rates_stay_within_bounds() -> None:
    held = _held(20_000)
    plan = make_plan(held, STANDARD, seed=5)
    pairs = sum(len(c) for c in held.values())
    for kind, rate in STANDARD.items():
        population = len(held) if kind == "offline" else pairs
        observed = plan.faults[kind] / population
        # Offline devices skip the faults that need an answer first, so those can be a little rarer.
        assert 0.6 * rate <= observed <= 1.3 * rate, (kind, observed, rate)
    none = make_plan(held, dict.fromkeys(FAULTS, 0.0), seed=5)
    assert not none.faults
    assert none.forms() == pairs  # exactly one form per (TPS, contest)


def test_a_small_plan_still_has_every_fault() -> None:
    plan = make_plan(_held(12), STANDARD, seed=1)
    assert set(plan.faults) == set(FAULTS)


def test_the_plan_and_the_sample_are_determined_by_the_seed() -> None:
    held = _held(2_000)
    assert make_plan(held, STANDARD, seed=9) == make_plan(held, STANDARD, seed=9)
    assert make_plan(held, STANDARD, seed=9).jobs != make_plan(held, STANDARD, seed=10).jobs
    codes = sorted(held)
    assert sample_tps(codes, 0.1, 4) == sample_tps(codes, 0.1, 4)
    assert len(sample_tps(codes, 0.1, 4)) == 200
    assert sample_tps(codes, 1.0, 4) == codes
    with pytest.raises(ValueError):
        sample_tps(codes, 0.0, 4)


def test_the_generated_forms_are_what_their_variant_says() -> None:
    """Checked with suara's own checks once here, so the end-to-end outcomes follow from the forms."""
    choices = ("100025", "100026", "100027")
    ppwp = Contest("ppwp", "", "", 300, tuple(Choice(c, c, i, "#000000") for i, c in enumerate(choices, 1)))
    for i in range(200):
        tps = f"3171011001{i:03d}"
        ok = make_form(1, tps, "ppwp", 1, "ok", choices)
        assert find_inconsistencies(ok) == []
        assert find_inconsistencies(make_form(1, tps, "ppwp", 2, "inconsistent", choices)) != []
        bad = make_form(1, tps, "ppwp", 1, "malformed", choices)
        assert any(v.field == "suara_tidak_sah" for v in find_malformed(bad, contest=ppwp, tps_known=True))
        assert make_form(1, tps, "ppwp", 1, "ok", choices) == ok  # regenerated, not stored


def test_the_oracle_reads_the_numbers_the_device_signs() -> None:
    """What verification expects of a TPS file (votes, administrasi) comes from the same numbers as the
    signed protobuf; read here from the protobuf's own fields, for every variant."""
    for choices in (("100025", "100026", "100027"), tuple(f"p{i}" for i in range(18))):
        for i in range(300):
            for variant in ("ok", "inconsistent", "malformed"):
                key = (i, f"3171011001{i:03d}", "pdpr", 1 + i % 4, variant, choices)
                form, signed = make_form(*key), numbers(*key)  # type: ignore[arg-type]
                assert signed.votes == [form.votes[c] for c in choices]
                admin = {"suara_sah": form.suara_sah, "suara_tidak_sah": form.suara_tidak_sah,
                         "suara_total": form.suara_total}  # fmt: skip
                for name in ("pemilih_dpt", "pengguna_dpt", "pengguna_dptb", "pengguna_non_dpt", "pengguna_total"):
                    triple = getattr(form, name)
                    admin |= {f"{name}_j": triple.j, f"{name}_l": triple.l, f"{name}_p": triple.p}
                assert administrasi(signed) == admin


# --- the oracle -----------------------------------------------------------------------------------------

_sends = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["ppwp", "pdpr"]),
        st.integers(1, 4),
        st.sampled_from(["ok", "inconsistent"]),
    ),
    max_size=30,
)


@given(_sends, st.randoms(use_true_random=False))
@settings(max_examples=200, deadline=None)
def test_any_order_of_sends_gives_the_same_oracle(sends: list[tuple[str, str, int, str]], rng: random.Random) -> None:
    # A (tps, contest, version) has one payload (tally would refuse another): its variant is fixed by its key.
    variant = {(t, c, v): x for t, c, v, x in sends}
    keyed = [(t, c, v, variant[(t, c, v)]) for t, c, v, _ in sends]
    shuffled = keyed[:]
    rng.shuffle(shuffled)
    a, b = Oracle(), Oracle()
    for t, c, v, x in keyed:
        a.acknowledge(t, c, v, x)  # type: ignore[arg-type]
    for t, c, v, x in shuffled:
        b.acknowledge(t, c, v, x)  # type: ignore[arg-type]
    assert a.current == b.current
    for contest in ("ppwp", "pdpr"):
        assert a.counted(contest) == b.counted(contest)
        # Counted: the TPS whose highest acknowledged version is not quarantined.
        highest = {(t, c): max(v for t2, c2, v, _ in keyed if (t2, c2) == (t, c)) for t, c, _, _ in keyed}
        want = sum(1 for (t, c), v in highest.items() if c == contest and variant[(t, c, v)] == "ok")
        assert a.counted(contest) == want


def test_freshness_is_the_first_sample_showing_the_acknowledged_count() -> None:
    samples = {"ppwp": [(1.0, 0), (2.0, 1), (3.0, 1), (4.0, 3), (5.0, 2)]}  # a re-read may lag: the max counts
    acks = {"ppwp": [(0.5, 1), (1.5, 2), (3.5, 3), (4.5, 4)]}
    result = freshness(acks, samples)
    assert result.seconds == [1.5, 2.5, 0.5]  # counted 1 seen at 2.0; 2 and 3 first seen at 4.0
    assert result.unseen == 1  # 4 TPS were never shown
