"""tally → outbox relay → aggregate, all real, wired as deployed: one database, service credentials.

Forms go in through tally's API (with resends, corrections, stale versions and
quarantine); the relay delivers the outbox; the totals aggregate serves at
every level equal an oracle computed in plain Python from what tally
acknowledged.
"""

from __future__ import annotations

import collections
import random
from pathlib import Path

import asyncpg
import grpc
import pytest

from services.aggregate.server import AggregateApp
from services.tally.credentials import enroll_device
from suara.client.aggregate_stub import aggregate_stub
from suara.election.signing import DeviceKey
from suara.v1 import aggregate_pb2, tally_pb2
from tests.support.aggregate import aggregate_settings
from tests.support.factories import consistent_form, signed
from tests.support.pki import suite_pki
from tests.support.tally import BASE_SETTINGS as TALLY_SETTINGS
from tests.support.tally import relaying, start_tally

Contribution = tuple[dict[str, int], int, int, int, int, int]  # votes, sah, tidak_sah, total, dpt, pengguna


def _zero(choices: list[str]) -> list[int]:
    return [0] * (len(choices) + 5)


async def test_forms_flow_through_relay_into_totals_at_every_level(
    db_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    pki = suite_pki()
    aggregate = await AggregateApp.create(aggregate_settings(0), db_url)
    await aggregate.start()
    internal = f"127.0.0.1:{aggregate.internal_port}"
    tally_settings = relaying(TALLY_SETTINGS, pki.bundle("tally-relay", "writer"), internal)
    tally = await start_tally(db_url, db, tally_settings)
    channel = pki.channel(internal, pki.credential("publish", "reader"))
    try:
        assert tally.app.relay is not None, "tally should relay when it has a writer credential"
        choices = tally.contests["ppwp"]
        rng = random.Random(11)
        acknowledged: dict[str, tuple[int, tally_pb2.SubmitRequest, bool]] = {}  # tps -> current (version, form, q)
        stations = rng.sample(tally.tps_codes, 60)
        for tps in stations:
            key = DeviceKey.generate(tps)
            await enroll_device(db, key.device_id, tps, key.public_key, "pipeline")
            for version in rng.sample([1, 2, 3], rng.randint(1, 3)):  # corrections and stale versions, any order
                form = consistent_form(tps, "ppwp", choices, version, seed=rng.randint(0, 9))
                quarantined = rng.random() < 0.2
                if quarantined:
                    form.suara_tidak_sah += 1
                request = signed(key, form)
                response = await tally.stub.Submit(request)
                if rng.random() < 0.3:  # a lost reply: the device sends the same form again
                    again = await tally.stub.Submit(request)
                    assert again.outcome == tally_pb2.OUTCOME_DUPLICATE and again.receipt == response.receipt
                current = response.outcome in (tally_pb2.OUTCOME_ACCEPTED, tally_pb2.OUTCOME_QUARANTINED)
                if current and version > acknowledged.get(tps, (0, request, False))[0]:
                    acknowledged[tps] = (version, request, quarantined)

        await tally.app.relay.wait_caught_up()

        # The oracle: each TPS's highest acknowledged version; quarantined ones count nothing.
        from suara.v1 import form_pb2

        expected: dict[str, list[int]] = collections.defaultdict(lambda: _zero(choices))
        flagged: collections.Counter[str] = collections.Counter()
        reported: collections.Counter[str] = collections.Counter()
        for tps, (_, request, quarantined) in acknowledged.items():
            form = form_pb2.CHasilForm.FromString(request.form.payload)
            row = [*(form.votes[c] for c in choices), form.suara_sah, form.suara_tidak_sah, form.suara_total,
                   form.pemilih_dpt.j, form.pengguna_total.j]  # fmt: skip
            for area in ("", tps[:2], tps[:4], tps[:6], tps[:10]):
                if quarantined:
                    flagged[area] += 1
                else:
                    reported[area] += 1
                    expected[area] = [a + b for a, b in zip(expected[area], row, strict=True)]

        stub = aggregate_stub(channel)

        def as_list(totals: aggregate_pb2.Totals) -> list[int]:
            return [*(totals.votes.get(c, 0) for c in choices), totals.suara_sah, totals.suara_tidak_sah,
                    totals.suara_total, totals.dpt, totals.pengguna]  # fmt: skip

        areas = sorted({a for tps in acknowledged for a in ("", tps[:2], tps[:4], tps[:6], tps[:10])})
        for area in areas:
            view = (await stub.GetArea(aggregate_pb2.GetAreaRequest(area=area, contest="ppwp"))).view
            assert as_list(view.area.totals) == expected[area], area
            assert (view.area.tps_reported, view.area.tps_quarantined) == (reported[area], flagged[area]), area

        with pytest.raises(grpc.aio.AioRpcError) as err:  # nobody without a certificate reads, let alone writes
            async with pki.channel(f"127.0.0.1:{aggregate.port}") as bare:
                await aggregate_stub(bare).ApplyUpdates(aggregate_pb2.ApplyUpdatesRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await channel.close()
        await tally.close()
        await aggregate.stop(0.5)
