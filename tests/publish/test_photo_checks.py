"""publish re-hashes every photo against the hash recorded for it, and decodes it, before writing it:
one that fails is not published, its TPS file shows no photo there, and its desa's status file says
which and why (tally's database may hold photos older than its checks, or altered since)."""

from __future__ import annotations

import hashlib
import json
import uuid

from suara.v1 import tally_pb2
from tests.support.factories import consistent_form, jpeg, signed
from tests.support.oracles.publish import nest
from tests.support.publish import Pipeline
from tests.support.tally import PHOTO_STORE

HTML_JPEG = b"\xff\xd8\xff\xe0<html><script>alert(document.domain)</script></html>"


async def test_a_photo_that_fails_its_hash_or_does_not_decode_is_not_published(pipeline: Pipeline) -> None:
    good_tps, altered_tps, html_tps = pipeline.tally_codes("ppwp")[:3]
    good, altered = jpeg(b"good page"), jpeg(b"altered later")
    await pipeline.submit(good_tps, photos=[good])
    await pipeline.submit(altered_tps, photos=[altered])
    altered_sha = hashlib.sha256(altered).hexdigest()
    await pipeline.db.execute("UPDATE tally.photo SET content = $1 WHERE sha256 = $2", HTML_JPEG, altered_sha)
    # Stored before photos were decoded at intake: its hash is right, its bytes are HTML.
    html_sha = hashlib.sha256(HTML_JPEG).hexdigest()
    await pipeline.db.execute(
        "INSERT INTO tally.photo (sha256, content_type, size, content) VALUES ($1, 'image/jpeg', $2, $3)",
        html_sha,
        len(HTML_JPEG),
        HTML_JPEG,
    )
    # The form names the stored photo without sending it again, as a device that sent it before does.
    form = consistent_form(html_tps, "ppwp", pipeline.choices["ppwp"], 1)
    form.photo_sha256.append(html_sha)
    reply = await pipeline.tally.stub.Submit(signed(await pipeline.key(html_tps), form))
    assert reply.outcome == tally_pb2.OUTCOME_ACCEPTED

    await pipeline.cycle()
    site = pipeline.site
    good_sha = hashlib.sha256(good).hexdigest()
    assert (site / f"foto/{good_sha[:2]}/{good_sha}.jpg").read_bytes() == good
    assert not list(site.glob(f"foto/*/{altered_sha}.*")) and not list(site.glob(f"foto/*/{html_sha}.*"))

    def tps_file(code: str) -> dict[str, object]:
        document: dict[str, object] = json.loads((site / f"pemilu/hhcw/ppwp/{nest(code)}.json").read_bytes())
        return document

    assert tps_file(good_tps)["images"] == [f"/foto/{good_sha[:2]}/{good_sha}.jpg", None, None]
    assert tps_file(altered_tps)["images"] == [None, None, None]
    assert tps_file(html_tps)["images"] == [None, None, None]
    for code, sha, why in ((altered_tps, altered_sha, "hash to"), (html_tps, html_sha, "does not decode")):
        status = json.loads((site / f"suara/status/ppwp/{nest(code[:10])}.json").read_bytes())
        [entry] = status["children"][code]["photos_unavailable"]
        assert entry["sha256"] == sha and why in entry["reason"], entry


async def test_a_photo_missing_from_tallys_store_is_not_published_and_the_rest_is(pipeline: Pipeline) -> None:
    kept_tps, lost_tps = pipeline.tally_codes("ppwp")[:2]
    kept, lost = jpeg(uuid.uuid4().bytes), jpeg(uuid.uuid4().bytes)  # bytes of this test's own: the store is shared
    await pipeline.submit(kept_tps, photos=[kept])
    await pipeline.submit(lost_tps, photos=[lost])
    lost_sha, kept_sha = hashlib.sha256(lost).hexdigest(), hashlib.sha256(kept).hexdigest()
    (PHOTO_STORE / lost_sha[:2] / lost_sha[2:4] / lost_sha).unlink()

    await pipeline.cycle()  # completes: one lost photo does not stop the site
    site = pipeline.site
    assert (site / f"foto/{kept_sha[:2]}/{kept_sha}.jpg").read_bytes() == kept
    assert not list(site.glob(f"foto/*/{lost_sha}.*"))
    lost_file = json.loads((site / f"pemilu/hhcw/ppwp/{nest(lost_tps)}.json").read_bytes())
    assert lost_file["images"] == [None, None, None]
    status = json.loads((site / f"suara/status/ppwp/{nest(lost_tps[:10])}.json").read_bytes())
    [entry] = status["children"][lost_tps]["photos_unavailable"]
    assert entry == {"sha256": lost_sha, "reason": "missing from tally's photo store"}
    assert str(PHOTO_STORE) not in json.dumps(status)  # where tally keeps photos is not published
