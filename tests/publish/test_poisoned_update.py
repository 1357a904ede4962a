"""One poisoned update does not stop the pipeline: it is set aside, and every other form still reaches
the published site, exactly (tests/support/oracles/publish.py)."""

from __future__ import annotations

import json
import random

from services.tally.dead_letters import dead_letters
from services.tally.relay import undelivered
from suara.v1 import tally_pb2
from tests.support.factories import consistent_form, signed
from tests.support.publish import Pipeline

POISON = 2**63 - 1  # the finding: one TPS's votes set to 9.22e18 overflowed every later roll-up


async def test_poisoned_updates_are_set_aside_and_every_other_form_is_published(pipeline: Pipeline) -> None:
    rng = random.Random(14)
    codes = pipeline.tally_codes("ppwp")
    huge_tps, overflow_tps = codes[-1], codes[-2]  # beyond what random_night picks from
    await pipeline.random_night(rng, 15)
    await pipeline.random_night(rng, 4, contest="pdpr")

    relay = pipeline.tally.app.relay
    assert relay is not None
    await relay.stop()  # so the rows below wait in the outbox, in the middle of everything else
    # A form that adds up, signed by the TPS's own device, that no TPS can hold (DPT 9,000): tally
    # cannot tell from the form alone; aggregate refuses it against the registry.
    form = consistent_form(huge_tps, "ppwp", pipeline.choices["ppwp"], 1, dpt=9_000)
    reply = await pipeline.tally.stub.Submit(signed(await pipeline.key(huge_tps), form))
    assert reply.outcome == tally_pb2.OUTCOME_ACCEPTED
    # A row rewritten in the database to the finding's 9.22e18 votes.
    await pipeline.submit(overflow_tps, "ppwp", 1)
    del pipeline.current[(overflow_tps, "ppwp")]  # it must not count: nothing of it may be published
    counts = json.dumps({"votes": {pipeline.choices["ppwp"][0]: POISON}, "suara_sah": POISON})
    rewritten = await pipeline.db.execute(
        "UPDATE tally.outbox SET counts = counts || $1::jsonb WHERE tps = $2", counts, overflow_tps
    )
    assert rewritten == "UPDATE 1"
    # Behind them: more forms, of every contest.
    await pipeline.random_night(rng, 15)
    await pipeline.random_night(rng, 4, contest="pdpr")
    await pipeline.random_night(rng, 3, contest="pkwkp")
    relay.start()

    await pipeline.cycle()
    await pipeline.check_site()  # every other TPS's current form, exactly; nothing of the poisoned ones
    assert await undelivered(pipeline.db) == 0, "the outbox drains"
    dead = await dead_letters(pipeline.db)
    assert sorted((d.tps, d.contest, d.version) for d in dead) == sorted(
        [(huge_tps, "ppwp", 1), (overflow_tps, "ppwp", 1)]
    )
    reasons = {d.tps: d.reason for d in dead}
    assert "more than this TPS can count" in reasons[huge_tps]
    assert f"must be between 0 and 10000, got {POISON}" in reasons[overflow_tps]
    alarms = await pipeline.db.fetchval("SELECT count(*) FROM tally.alarm WHERE kind = 'dead_letter'")
    assert alarms == 2
