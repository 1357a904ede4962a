"""publish against the oracle: forms go in through tally, the relay feeds aggregate, publish writes the
site; every totals file at every level, every TPS file, region list and status file must equal what
tests/support/oracles/publish.py computes from what tally acknowledged."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import grpc
import pytest

from services.aggregate.queries import QUERIES as AGGREGATE_QUERIES
from services.publish import cycle as cycle_module
from services.publish.sinks.local import LocalSink
from suara.election.signing import OfficialKey
from suara.v1 import aggregate_pb2, tally_pb2
from tests.publish.recording import KilledMidway, RecordingSink
from tests.support.factories import TEST_ELECTION
from tests.support.oracles import chain as chain_oracle
from tests.support.oracles.publish import nest
from tests.support.publish import Pipeline
from tests.support.tally import CHAIN_KEY

NIST_SCHEMA = Path(__file__).resolve().parent / "nist-1500-100-v2-results.schema.json"


def _tree(site: Path) -> dict[str, bytes]:
    return {str(f.relative_to(site)): f.read_bytes() for f in site.rglob("*") if f.is_file()}


@pytest.mark.parametrize("seed", [1, 2])
async def test_cycles_match_the_oracle_and_a_rebuild_writes_the_same_bytes(
    pipeline: Pipeline, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    await pipeline.random_night(rng, 40)
    first = await pipeline.cycle()
    assert first is not None and first.full, "the first cycle writes everything"
    await pipeline.check_site()

    await pipeline.random_night(rng, 30)
    await pipeline.random_night(rng, 10, contest="pdpr")
    await pipeline.random_night(rng, 5, contest="pkwkp")
    second = await pipeline.cycle()
    assert second is not None and not second.full and second.snapshot == first.snapshot + 1
    await pipeline.check_site()
    assert await pipeline.cycle() is None, "nothing changed: no cycle, no new snapshot"

    shown = {sha for accepted in pipeline.current.values() for sha in accepted.form.photo_sha256}
    assert shown, "the night should have sent photos"
    for sha in shown:
        content = pipeline.photos[sha]
        kind = "png" if content.startswith(b"\x89PNG") else "jpg"
        assert (pipeline.site / f"foto/{sha[:2]}/{sha}.{kind}").read_bytes() == content

    rebuilt = tmp_path / "rebuilt"
    result = await pipeline.publisher_for(LocalSink(rebuilt)).cycle(full=True)
    assert result is not None and result.full
    before, after = _tree(pipeline.site), _tree(rebuilt)
    # The pointer and the feed are each publisher's own snapshots; the bulk files are as of their last rewrite.
    for tree in (before, after):
        for path in [p for p in tree if p.startswith(("suara/snapshot.json", "suara/perubahan", "suara/unduh"))]:
            tree.pop(path)
    extra = set(before) - set(after)  # photos of forms since corrected stay published (immutable, unlinked)
    assert set(after) <= set(before) and all(path.startswith("foto/") for path in extra), extra
    different = [path for path in after if before[path] != after[path]]
    assert not different, f"a rebuild must write the same bytes; differs: {different[:5]}"


async def test_a_cycle_rewrites_only_what_changed(pipeline: Pipeline) -> None:
    await pipeline.random_night(random.Random(3), 10)
    await pipeline.cycle()
    tps = pipeline.all_tps[len(pipeline.all_tps) // 2]
    await pipeline.submit(tps, "ppwp", 1, seed=9)
    recording = RecordingSink(LocalSink(pipeline.site))
    pipeline.publisher.sink = recording
    result = await pipeline.cycle()
    assert result is not None
    snapshot = result.snapshot
    areas = ["", tps[:2], tps[:4], tps[:6], tps[:10]]
    expected = {f"pemilu/hhcw/ppwp/{nest(a)}.json" if a else "pemilu/hhcw/ppwp.json" for a in areas}
    # Status files are unchanged (nothing new is flagged there), so they are not rewritten.
    expected |= {f"pemilu/hhcw/ppwp/{nest(tps)}.json", "suara/nist/ppwp.json", "suara/snapshot.json"}
    expected |= {f"suara/riwayat/ppwp/{snapshot}.json", "suara/riwayat/ppwp.json"}
    expected |= {f"suara/perubahan/{snapshot}/0.json", "suara/perubahan.json"}  # the bulk files: not yet due
    assert sorted(recording.paths) == sorted(expected), "the cost of a cycle follows the change, not the country"
    await pipeline.check_site()


@pytest.mark.parametrize("die_after", [0, 5, 17])
async def test_a_cycle_killed_midway_leaves_a_readable_site_and_the_next_completes_it(
    pipeline: Pipeline, die_after: int
) -> None:
    rng = random.Random(die_after)
    await pipeline.random_night(rng, 20)
    await pipeline.cycle()
    pointer = json.loads((pipeline.site / "suara/snapshot.json").read_bytes())
    await pipeline.random_night(rng, 20)
    pipeline.publisher.sink = RecordingSink(LocalSink(pipeline.site), die_after=die_after)
    with pytest.raises(KilledMidway):
        await pipeline.cycle()
    for file in pipeline.site.rglob("*.json"):  # nothing half-written, anywhere
        json.loads(file.read_bytes())
    assert json.loads((pipeline.site / "suara/snapshot.json").read_bytes()) == pointer, "the old snapshot stands"
    assert not [f for f in pipeline.site.rglob("*") if f.name.endswith(".tmp")]
    pipeline.publisher.sink = LocalSink(pipeline.site)
    result = await pipeline.cycle()
    assert result is not None and result.snapshot == pointer["snapshot"] + 1
    await pipeline.check_site()


async def test_quarantine_and_reconciliation_are_published_in_status_files(pipeline: Pipeline) -> None:
    row = await pipeline.db.fetchrow(
        "SELECT left(code, 6) AS k, array_agg(code ORDER BY code) AS tps FROM registry.tps"
        " GROUP BY 1 HAVING count(*) >= 2 ORDER BY 1 LIMIT 1"
    )
    kecamatan, stations = row["k"], list(row["tps"])
    for i, tps in enumerate(stations):
        await pipeline.submit(tps, "ppwp", 1, seed=i, quarantined=(i == 0))
    await pipeline.cycle()
    status = json.loads((pipeline.site / f"suara/status/ppwp/{nest(stations[0][:10])}.json").read_bytes())
    assert status["children"][stations[0]]["tps_quarantined"] == 1
    assert status["children"][stations[0]]["failed_checks"], "why it is quarantined is published"
    kec = json.loads((pipeline.site / f"suara/status/ppwp/{nest(kecamatan)}.json").read_bytes())
    assert kec["reconciliation"]["status"] == "NO_RECAP"

    # The PPK signs a recap that disagrees with the digital count by one vote for the first choice.
    choices = pipeline.choices["ppwp"]
    counted = [pipeline.current[(t, "ppwp")] for t in stations if not pipeline.current[(t, "ppwp")].quarantined]
    votes = {c: sum(a.form.votes[c] for a in counted) for c in choices}
    votes[choices[0]] += 1
    totals = aggregate_pb2.Totals(votes=votes, suara_sah=sum(a.form.suara_sah for a in counted) + 1)
    key = OfficialKey.generate(kecamatan, "ppk")
    await pipeline.db.execute(
        AGGREGATE_QUERIES.enroll_official, key.official_id, key.area, key.role, key.public_key, "test"
    )
    payload = aggregate_pb2.RecapForm(
        area=kecamatan, contest="ppwp", version=1, totals=totals, election_id=TEST_ELECTION
    ).SerializeToString()
    from suara.client.aggregate_stub import aggregate_stub

    await aggregate_stub(pipeline.channel).SubmitRecap(
        aggregate_pb2.SubmitRecapRequest(
            recap=aggregate_pb2.SignedRecap(payload=payload, signature=key.sign(payload), official_id=key.official_id)
        )
    )
    result = await pipeline.cycle()
    assert result is not None, "an accepted recap is a change publish follows"
    kec = json.loads((pipeline.site / f"suara/status/ppwp/{nest(kecamatan)}.json").read_bytes())
    differences = {d["field"]: d["difference"] for d in kec["reconciliation"]["differences"]}
    assert differences[f"votes[{choices[0]}]"] == 1 and differences["suara_sah"] == 1
    # Incomplete (a TPS is quarantined and others unreported) or mismatched: never MATCH.
    assert kec["reconciliation"]["status"] in ("INCOMPLETE", "MISMATCH")
    parent = json.loads((pipeline.site / f"suara/status/ppwp/{nest(kecamatan[:4])}.json").read_bytes())
    assert parent["children"][kecamatan]["reconciliation"] == kec["reconciliation"]["status"]


async def test_the_nist_export_validates_and_carries_the_national_totals(pipeline: Pipeline) -> None:
    import jsonschema

    await pipeline.random_night(random.Random(5), 25)
    await pipeline.cycle()
    report = json.loads((pipeline.site / "suara/nist/ppwp.json").read_bytes())
    jsonschema.Draft4Validator(json.loads(NIST_SCHEMA.read_text())).validate(report)
    national = json.loads((pipeline.site / "pemilu/hhcw/ppwp.json").read_bytes())
    text = json.dumps(report)
    for choice in pipeline.choices["ppwp"]:
        assert choice in text
    assert national["progres"]["progres"] == sum(
        1 for (_, c), a in pipeline.current.items() if c == "ppwp" and not a.quarantined
    )


async def test_history_and_pointer(pipeline: Pipeline) -> None:
    rng = random.Random(8)
    snapshots = []
    for _ in range(3):
        await pipeline.random_night(rng, 8)
        result = await pipeline.cycle()
        assert result is not None
        snapshots.append(result.snapshot)
        pointer = json.loads((pipeline.site / "suara/snapshot.json").read_bytes())
        national = json.loads((pipeline.site / "pemilu/hhcw/ppwp.json").read_bytes())
        assert pointer["snapshot"] == result.snapshot
        assert pointer["contests"]["ppwp"]["progres"] == national["progres"]["progres"]
        head = await pipeline.db.fetchrow("SELECT position, hash FROM tally.chain_head")
        published = pointer["chain_head"]
        assert (published["position"], published["hash"]) == (head["position"], bytes(head["hash"]).hex())
        assert chain_oracle.head_verifies(CHAIN_KEY.public_key, published), "signed by tally's chain key"
        entry = json.loads((pipeline.site / f"suara/riwayat/ppwp/{result.snapshot}.json").read_bytes())
        assert entry["chain_head"] == published, "the history entry carries the snapshot's head"
    keys = json.loads((pipeline.site / "suara/kunci-rantai.json").read_bytes())
    assert keys == {
        "algorithm": "Ed25519",
        "keys": [{"key_id": CHAIN_KEY.key_id, "public_key": CHAIN_KEY.public_key.hex()}],
    }
    index = json.loads((pipeline.site / "suara/riwayat/ppwp.json").read_bytes())
    assert [e["snapshot"] for e in index] == snapshots
    last = json.loads((pipeline.site / f"suara/riwayat/ppwp/{snapshots[-1]}.json").read_bytes())
    assert {k: v for k, v in last["nasional"].items() if k.isdigit()} == {
        k: v for k, v in national["chart"].items() if k.isdigit()
    }


@pytest.mark.parametrize("full", [True, False])
async def test_a_snapshot_is_listed_in_the_history_only_once_its_pointer_is_written(
    pipeline: Pipeline, full: bool
) -> None:
    """The order a reader relies on (docs/layout.md): each data file, history entry and the chain keys land
    in a write before the pointer's, each history index in a write after it, so the index never lists a
    snapshot that a killed cycle wrote but never published (and a redo may write differently)."""
    rng = random.Random(12)
    await pipeline.random_night(rng, 10)
    await pipeline.cycle()
    for contest in ("ppwp", "pdpr"):
        await pipeline.random_night(rng, 10, contest=contest)
    recording = RecordingSink(LocalSink(pipeline.site))
    pipeline.publisher.sink = recording
    result = await pipeline.cycle(full=full)
    assert result is not None
    landed = {path: i for i, call in enumerate(recording.calls) for path in call}  # path -> its write call
    pointer = landed["suara/snapshot.json"]
    assert recording.calls[pointer] == ["suara/snapshot.json"], "the pointer on its own"
    indexes = [path for path in landed if path.startswith("suara/riwayat/") and path.count("/") == 2]
    changed = ["pdpr", "pkwkp", "ppwp"] if full else ["pdpr", "ppwp"]  # a rebuild writes every index
    assert sorted(indexes) == [f"suara/riwayat/{contest}.json" for contest in changed]
    assert all(landed[path] > pointer for path in indexes)
    # The feed's pages, then its head, and the bulk files: after the snapshot is committed.
    pages = [path for path in landed if path.startswith("suara/perubahan/")]
    assert pages and max(landed[path] for path in pages) < landed["suara/perubahan.json"]
    assert pointer < min(landed[path] for path in pages)
    later = {*indexes, *pages, "suara/perubahan.json", "suara/unduh.json"} | {
        path for path in landed if path.startswith("suara/unduh/")
    }
    assert all(i < pointer for path, i in landed.items() if path not in later and path != "suara/snapshot.json")
    for contest in ("ppwp", "pdpr"):
        assert landed[f"suara/riwayat/{contest}/{result.snapshot}.json"] < pointer


async def test_a_contest_that_changed_after_the_cycles_changes_shows_the_pointers_numbers(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cycle takes aggregate's changes up to a sequence, and then reads the national view of a contest it
    had nothing for, which may already hold later changes: the pointer shows that view's numbers, so the
    contest's national totals file (written before the pointer) must show them too."""
    await pipeline.random_night(random.Random(13), 5)
    await pipeline.cycle()
    fresh = [t for t in pipeline.tally_codes("pkwkp") if (t, "pkwkp") not in pipeline.current]
    await pipeline.submit(pipeline.all_tps[-1], "ppwp", 4)
    await pipeline.delivered()
    await pipeline.submit(fresh[0], "pkwkp")  # a later sequence than the ppwp form's
    await pipeline.delivered()
    monkeypatch.setattr(cycle_module, "CYCLE_CHANGES", 1)  # this cycle takes the first sequence only
    result = await pipeline.publisher.cycle()
    assert result is not None
    pointer = json.loads((pipeline.site / "suara/snapshot.json").read_bytes())
    assert not pointer["caught_up"], "the pkwkp form came after the cycle's sequence"
    for contest, shown in pointer["contests"].items():
        national = json.loads((pipeline.site / f"pemilu/hhcw/{contest}.json").read_bytes())
        assert national["progres"] == {"progres": shown["progres"], "total": shown["total"]}, contest
    assert pointer["contests"]["pkwkp"]["progres"] == sum(c == "pkwkp" and not a.quarantined
                                                          for (_, c), a in pipeline.current.items())  # fmt: skip


async def test_behind_a_backlog_each_cycle_takes_part_and_moves_the_pointer(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.publish import cycle

    rng = random.Random(4)
    await pipeline.random_night(rng, 10)
    await pipeline.cycle()
    await pipeline.random_night(rng, 40)
    await pipeline.random_night(rng, 10, contest="pdpr")
    await pipeline.delivered()
    newest = await pipeline.db.fetchval("SELECT max(sequence) FROM aggregate.change")
    monkeypatch.setattr(cycle, "CYCLE_CHANGES", 25)
    reached, snapshots, caught_up = [], [], []
    while (result := await pipeline.publisher.cycle()) is not None:
        reached.append(result.sequence)
        snapshots.append(result.snapshot)
        pointer = json.loads((pipeline.site / "suara/snapshot.json").read_bytes())
        assert (pointer["snapshot"], pointer["aggregate_sequence"]) == (result.snapshot, result.sequence)
        caught_up.append(pointer["caught_up"])
    assert len(reached) > 1, "a backlog larger than one cycle's share takes several cycles"
    assert caught_up == [False] * (len(reached) - 1) + [True], "only the last snapshot has every change"
    assert reached == sorted(reached) and reached[-1] == newest
    assert snapshots == list(range(snapshots[0], snapshots[0] + len(snapshots)))
    await pipeline.check_site()


async def test_a_file_rewritten_by_a_later_cycle_is_never_served_immutable(pipeline: Pipeline) -> None:
    """Whatever two cycles write with different bytes under one name must not be cached for a year."""
    from services.publish.cache import cache_control_for

    rng = random.Random(21)
    await pipeline.random_night(rng, 15)
    await pipeline.cycle()
    before = _tree(pipeline.site)
    await pipeline.random_night(rng, 15)
    await pipeline.random_night(rng, 5, contest="pdpr")
    await pipeline.cycle()
    after = _tree(pipeline.site)
    rewritten = sorted(path for path in before.keys() & after.keys() if before[path] != after[path])
    assert "suara/riwayat/ppwp.json" in rewritten, "the history list is rewritten every snapshot"
    immutable = [path for path in rewritten if "immutable" in cache_control_for(path)]
    assert not immutable, immutable
    kept = [path for path in before if "immutable" in cache_control_for(path)]
    assert kept and all(after[path] == before[path] for path in kept), "what is immutable is never rewritten"


async def test_without_a_signed_head_from_tally_the_last_signed_one_stays_published(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(12)
    await pipeline.random_night(rng, 6)
    await pipeline.cycle()
    signed_head = json.loads((pipeline.site / "suara/snapshot.json").read_bytes())["chain_head"]
    stub = pipeline.publisher.tally
    assert stub is not None
    genuine = stub.GetChainHead

    async def unreachable(*args: object, **kwargs: object) -> tally_pb2.GetChainHeadResponse:
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down")

    async def forged(request: tally_pb2.GetChainHeadRequest, **kwargs: float) -> tally_pb2.GetChainHeadResponse:
        reply: tally_pb2.GetChainHeadResponse = await genuine(request, timeout=kwargs["timeout"])
        reply.chain_head.position += 1  # no longer what the signature covers
        return reply

    for fake in (unreachable, forged):
        monkeypatch.setattr(stub, "GetChainHead", fake)
        await pipeline.random_night(rng, 3)
        result = await pipeline.cycle()
        assert result is not None
        pointer = json.loads((pipeline.site / "suara/snapshot.json").read_bytes())
        assert pointer["snapshot"] == result.snapshot and pointer["chain_head"] == signed_head, fake.__name__
        tally_now = await pipeline.db.fetchval("SELECT position FROM tally.chain_head")
        assert tally_now > signed_head["position"]


async def _sign_recap(pipeline: Pipeline, key: OfficialKey, version: int, totals: aggregate_pb2.Totals) -> None:
    from suara.client.aggregate_stub import aggregate_stub

    payload = aggregate_pb2.RecapForm(
        area=key.area, contest="ppwp", version=version, totals=totals, election_id=TEST_ELECTION
    ).SerializeToString()
    reply = await aggregate_stub(pipeline.channel).SubmitRecap(
        aggregate_pb2.SubmitRecapRequest(
            recap=aggregate_pb2.SignedRecap(payload=payload, signature=key.sign(payload), official_id=key.official_id)
        )
    )
    assert reply.outcome == aggregate_pb2.RECAP_OUTCOME_ACCEPTED, reply


async def test_a_recap_that_differs_is_counted_at_every_level_and_lists_the_tps_it_sums(pipeline: Pipeline) -> None:
    """A PPK's recap one vote off: the next (incremental) cycle counts it in the status file of its kecamatan
    and of every area above, the nation's included (aggregate logs the recap for the kecamatan and its
    parent only), and publishes the kecamatan's TPS with their numbers of each field that differs; the
    corrected recap takes every count away again. The oracle is the forms tally acknowledged."""
    row = await pipeline.db.fetchrow(
        "SELECT left(code, 6) AS k, array_agg(code ORDER BY code) AS tps FROM registry.tps"
        " GROUP BY 1 HAVING count(*) BETWEEN 2 AND 8 ORDER BY 1 LIMIT 1"
    )
    kecamatan, stations = row["k"], list(row["tps"])
    for i, tps in enumerate(stations):  # every TPS counted: the recap can be MISMATCH, not INCOMPLETE
        await pipeline.submit(tps, "ppwp", 1, seed=i)
    elsewhere = next(t for t in pipeline.all_tps if t[:2] != kecamatan[:2])
    await pipeline.submit(elsewhere, "ppwp", 1)
    assert await pipeline.cycle() is not None
    levels = ["", kecamatan[:2], kecamatan[:4], kecamatan]

    def status(area: str) -> dict[str, Any]:
        path = "suara/status/ppwp.json" if area == "" else f"suara/status/ppwp/{nest(area)}.json"
        return dict(json.loads((pipeline.site / path).read_bytes()))

    assert not any("recap_mismatches" in status(a) for a in levels)
    choices = pipeline.choices["ppwp"]
    forms = [pipeline.current[(t, "ppwp")].form for t in stations]
    votes = {c: sum(f.votes[c] for f in forms) for c in choices}
    votes[choices[0]] += 1
    key = OfficialKey.generate(kecamatan, "ppk")
    await pipeline.db.execute(
        AGGREGATE_QUERIES.enroll_official, key.official_id, key.area, key.role, key.public_key, "t"
    )
    await _sign_recap(pipeline, key, 1, aggregate_pb2.Totals(votes=votes, suara_sah=sum(f.suara_sah for f in forms)))
    result = await pipeline.cycle()
    assert result is not None and not result.full
    for i, area in enumerate(levels):
        doc = status(area)
        assert doc["recap_mismatches"] == 1, area
        if i + 1 < len(levels):  # the way down: the child it lies in says so
            assert doc["children"][levels[i + 1]]["recap_mismatches"] == 1, area
    assert "recap_mismatches" not in status(elsewhere[:2])

    recap = json.loads((pipeline.site / f"suara/rekap/ppwp/{nest(kecamatan)}.json").read_bytes())
    assert (recap["kode"], recap["status"], recap["recap_version"], recap["unit"]) == (kecamatan, "MISMATCH", 1, "tps")
    fields = [d["field"] for d in recap["differences"]]
    assert f"votes[{choices[0]}]" in fields and "suara_total" in fields  # the recap left suara_total at 0
    assert [u["kode"] for u in recap["units"]] == stations
    oracle = {f"votes[{c}]": (lambda f, c=c: f.votes[c]) for c in choices} | {
        "suara_sah": lambda f: f.suara_sah,
        "suara_tidak_sah": lambda f: f.suara_tidak_sah,
        "suara_total": lambda f: f.suara_total,
    }
    for unit, form in zip(recap["units"], forms, strict=True):
        assert (unit["status"], unit["versi"]) == ("dihitung", 1), unit
        for field in fields:
            if field in oracle:
                assert unit["digital"][field] == unit["signed"][field] == oracle[field](form), (unit["kode"], field)
    for d in recap["differences"]:
        field = d["field"]
        assert sum(u["digital"][field] for u in recap["units"]) == recap["digital"][field] == d["digital"], field
        assert recap["recap"][field] == d["recap"], field
    assert recap["recap"][f"votes[{choices[0]}]"] == recap["digital"][f"votes[{choices[0]}]"] + 1

    # The plenary corrects it: the recap now equals the digital count (as aggregate reads it).
    from suara.client.aggregate_stub import aggregate_stub

    digital = (
        await aggregate_stub(pipeline.channel).GetReconciliation(
            aggregate_pb2.GetReconciliationRequest(area=kecamatan, contest="ppwp")
        )
    ).reconciliation.digital
    await _sign_recap(pipeline, key, 2, digital)
    assert await pipeline.cycle() is not None
    assert not any("recap_mismatches" in status(a) for a in levels)
    assert not any("recap_mismatches" in entry for a in levels for entry in status(a)["children"].values())
    recap = json.loads((pipeline.site / f"suara/rekap/ppwp/{nest(kecamatan)}.json").read_bytes())
    assert (recap["status"], recap["recap_version"], recap["differences"], recap["units"]) == ("MATCH", 2, [], [])
