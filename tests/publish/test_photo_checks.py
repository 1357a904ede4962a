"""publish re-hashes every photo against the hash recorded for it, and decodes it, before writing it:
one that fails is not published, its TPS file shows no photo there, and its desa's status file says
which and why (tally's database may hold photos older than its checks, or altered since)."""

from __future__ import annotations

import hashlib
import json

from suara.v1 import tally_pb2
from tests.support.factories import consistent_form, jpeg, signed
from tests.support.oracles.publish import nest
from tests.support.publish import Pipeline

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
