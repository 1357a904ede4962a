"""Photos by URL: when tally keeps photos in a bucket (SUARA_PHOTO_STORE=s3://…), publish copies none of
them and each TPS file's `images` are their public URLs there; with the embedded default (a local
directory store, which readers cannot reach) it copies them into the site as before.

The photo bucket is SeaweedFS's (tests/support/s3.py), read anonymously over plain HTTP as a visitor's
browser would; the oracle is the bytes the devices sent, by the SHA-256 the test computes itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import urllib.request
from pathlib import Path

import asyncpg
import pytest

from services.publish.server import photo_links
from services.publish.sinks.local import LocalSink
from suara.runtime.settings import PublishSettings, SettingError, Settings, TallySettings
from tests.support.factories import jpeg, png
from tests.support.publish import Pipeline, open_pipeline
from tests.support.s3 import Bucket, bucket_name
from tests.support.tally import BASE_SETTINGS, with_tally

PREFIX = "night"


def _tps_file(site: Path, contest: str, tps: str) -> dict[str, object]:
    from suara.site.paths import tps_path

    return dict(json.loads((site / tps_path(contest, tps)).read_bytes()))


def _fetch(url: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.read(), reply.headers["Content-Type"]


async def _night(p: Pipeline, rng: random.Random) -> dict[str, list[bytes]]:
    """Forms with one to three photos each, at TPS of their own; tps -> the photos it sent, in order."""
    sent: dict[str, list[bytes]] = {}
    for tps in rng.sample(p.tally_codes("ppwp"), 6):
        photos = [rng.choice((jpeg, png))(rng.randbytes(8)) for _ in range(rng.randint(1, 3))]
        reply = await p.submit(tps, photos=photos)
        assert reply is not None
        sent[tps] = photos
    await p.delivered()
    return sent


async def test_with_photos_in_a_bucket_tps_files_link_them_there_and_nothing_is_copied(
    db_url: str, db: asyncpg.Connection, s3_endpoint: str, tmp_path: Path
) -> None:
    bucket = await asyncio.to_thread(Bucket, s3_endpoint, bucket_name("photos", tmp_path))
    # SeaweedFS grows a new bucket's first volume on its first write: done here, not inside a Submit's deadline.
    await asyncio.to_thread(bucket.client.put_object, Bucket=bucket.name, Key="warm-up", Body=b"")
    store = f"s3://{bucket.name}/{PREFIX}"
    settings = with_tally(BASE_SETTINGS, photo_store=store, photo_store_endpoint_url=s3_endpoint)
    base = f"{s3_endpoint}/{bucket.name}/{PREFIX}"  # the bucket as readers reach it (anonymous reads)
    async with open_pipeline(db_url, db, tmp_path, settings) as p:
        sent = await _night(p, random.Random(17))
        site = tmp_path / "site"
        publisher = p.publisher_for(LocalSink(site))
        linking = type(publisher)(publisher.pool, publisher.sink, publisher.aggregate, publisher.tally,
                                  publisher.contests, photo_base=base)  # fmt: skip
        result = await linking.cycle(full=True)
        assert result is not None and result.photos == 0
    assert not (site / "foto").exists(), "a linked photo is not copied"
    for tps, photos in sent.items():
        shas = [hashlib.sha256(photo).hexdigest() for photo in photos]
        images = _tps_file(site, "ppwp", tps)["images"]
        assert images == [f"{base}/{sha[:2]}/{sha}" for sha in shas] + [None] * (3 - len(shas))
        for url, photo in zip(images, photos, strict=False):
            assert isinstance(url, str)
            body, content_type = await asyncio.to_thread(_fetch, url)
            assert body == photo, url
            assert content_type == ("image/png" if photo.startswith(b"\x89PNG") else "image/jpeg")


async def test_with_the_embedded_photo_store_photos_are_copied_into_the_site(pipeline: Pipeline) -> None:
    sent = await _night(pipeline, random.Random(18))
    result = await pipeline.cycle(full=True)
    assert result is not None and result.photos == sum(len(photos) for photos in sent.values())
    for tps, photos in sent.items():
        images = _tps_file(pipeline.site, "ppwp", tps)["images"]
        assert isinstance(images, list)
        for image, photo in zip(images, photos, strict=False):
            sha, extension = hashlib.sha256(photo).hexdigest(), "png" if photo.startswith(b"\x89PNG") else "jpg"
            assert image == f"/foto/{sha[:2]}/{sha}.{extension}"
            assert (pipeline.site / image.lstrip("/")).read_bytes() == photo


def _settings(photo_store: str = "", public_url: str = "", photo_public_url: str = "") -> Settings:
    return Settings(
        tally=TallySettings(photo_store=photo_store),
        publish=PublishSettings(public_url=public_url, photo_public_url=photo_public_url),
    )


def test_photos_are_linked_only_from_a_bucket_and_at_the_configured_url() -> None:
    assert photo_links(_settings()) is None
    assert photo_links(_settings("/var/lib/suara/photos", "https://hasil.example.id")) is None
    bucket = "s3://suara-photos/night"
    assert photo_links(_settings(bucket, "https://hasil.example.id/")) == "https://hasil.example.id/foto"
    assert photo_links(_settings(bucket, "https://hasil.example.id", "https://foto.example.id/night/")) == (
        "https://foto.example.id/night"
    )
    with pytest.raises(SettingError, match="SUARA_PHOTO_PUBLIC_URL"):
        photo_links(_settings(bucket))
