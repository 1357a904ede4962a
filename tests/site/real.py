"""The site the page tests read, written by the real pipeline: forms through tally, the relay into
aggregate, a recap by a PPK, one publish cycle. The expected numbers are summed in plain Python from
the forms tally acknowledged (tests/support/oracles/publish.py), not read from the published files."""

from __future__ import annotations

import random

from services.aggregate.queries import QUERIES as AGGREGATE_QUERIES
from suara.client.aggregate_stub import aggregate_stub
from suara.election.signing import OfficialKey
from suara.v1 import aggregate_pb2
from tests.site.sample import PHOTO_JPEG, SampleSite
from tests.support.factories import TEST_ELECTION
from tests.support.oracles.publish import administrasi
from tests.support.publish import Pipeline

CONTEST = "ppwp"


async def build_real_site(p: Pipeline) -> SampleSite:
    rng = random.Random(2024)
    choices = p.choices[CONTEST]
    by_kecamatan: dict[str, list[str]] = {}
    for code in p.all_tps:
        by_kecamatan.setdefault(code[:6], []).append(code)
    # A kecamatan counted completely (so its recap can be a MISMATCH, not INCOMPLETE); its first TPS
    # carries one real photo.
    kecamatan = next(
        k
        for k, codes in sorted(by_kecamatan.items())
        if 2 <= len(codes) <= 6 and any(o[:4] == k[:4] and o != k for o in by_kecamatan)
    )
    stations = by_kecamatan[kecamatan]
    for i, tps in enumerate(stations):
        await p.submit(tps, CONTEST, 1, seed=i, photos=[PHOTO_JPEG] if i == 0 else [])
    # One quarantined TPS, alone in its desa, in the same kabupaten/kota where there is another kecamatan;
    # and counted TPS across the country.
    others = [t for t in p.all_tps if t[:6] != kecamatan]
    quarantined = rng.choice([t for t in others if t[:4] == kecamatan[:4]])
    await p.submit(quarantined, CONTEST, 1, quarantined=True)
    for tps in rng.sample([t for t in others if t[:10] != quarantined[:10]], 25):
        await p.submit(tps, CONTEST, rng.randint(1, 2), seed=rng.randint(0, 5))

    # The PPK's recap is one vote off for the first choice.
    counted = [p.current[(t, CONTEST)].form for t in stations]
    votes = {c: sum(f.votes[c] for f in counted) for c in choices}
    votes[choices[0]] += 1
    key = OfficialKey.generate(kecamatan, "ppk")
    await p.db.execute(AGGREGATE_QUERIES.enroll_official, key.official_id, key.area, key.role, key.public_key, "t")
    payload = aggregate_pb2.RecapForm(
        area=kecamatan, contest=CONTEST, version=1, totals=aggregate_pb2.Totals(votes=votes), election_id=TEST_ELECTION
    ).SerializeToString()
    await aggregate_stub(p.channel).SubmitRecap(
        aggregate_pb2.SubmitRecapRequest(
            recap=aggregate_pb2.SignedRecap(payload=payload, signature=key.sign(payload), official_id=key.official_id)
        )
    )
    await p.cycle()

    current = {tps: a for (tps, contest), a in p.current.items() if contest == CONTEST}
    national = dict.fromkeys(choices, 0)
    for accepted in current.values():
        if not accepted.quarantined:
            for c in choices:
                national[c] += accepted.form.votes[c]
    shown = current[stations[0]].form
    return SampleSite(
        site_dir=p.site,
        contest=CONTEST,
        choices=tuple(choices),
        expected_votes=national,
        expected_progres=sum(not a.quarantined for a in current.values()),
        expected_total=len(p.all_tps),
        tps_path=tuple(stations[0][:n] for n in (2, 4, 6, 10, 13)),
        tps_votes={c: shown.votes[c] for c in choices},
        tps_administrasi=administrasi(shown),
        quarantined_tps=quarantined,
        mismatch_kecamatan=kecamatan,
        no_data_tps=next(t for t in p.all_tps if t not in current),
    )
