"""deploy/nginx/bucket.conf with the real nginx in front of a real S3 server (SeaweedFS): the site as
publish's S3 sink stores it is served as the directory would be, and the last good copies go on
being served while the bucket is down (issue 15's drill: object storage down for a while).

The oracle is the sample site's directory: each file's bytes (or its `.gz` twin's, for a reader who
accepts gzip) and services.publish.cache's headers for its path.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

from cli.seaweedfs import SeaweedFS
from services.publish.cache import content_type_for
from services.publish.files import SiteFile
from services.publish.sinks.s3 import S3Sink
from suara.runtime.objects import S3ObjectStore
from tests.site.client import fetch
from tests.site.nginx import run_nginx
from tests.site.sample import SampleSite
from tests.support.s3 import Bucket

# Every object expires after a second, so the test sees nginx serve copies past their max-age without
# waiting the real policy's 5-3600 s.
SHORT = "public, max-age=1, stale-if-error=86400"
PREFIX = "pemilu2024"


def _files(site: Path) -> dict[str, bytes]:
    return {p.relative_to(site).as_posix(): p.read_bytes() for p in site.rglob("*") if p.is_file()}


async def test_bucket_conf_serves_the_bucket_like_the_directory_and_stale_while_it_is_down(
    nginx: str, deploy_dir: Path, sample: SampleSite, tmp_path: Path, s3_endpoint: str, seaweedfs: SeaweedFS
) -> None:
    del s3_endpoint  # for its AWS_* environment; the bucket is in a SeaweedFS of the test's own, to stop it
    bucket = await asyncio.to_thread(Bucket, seaweedfs.endpoint, "site")
    on_disk = _files(sample.site_dir)
    plain = {path: body for path, body in on_disk.items() if not path.endswith(".gz")}
    sink = S3Sink(bucket.name, PREFIX + "/", endpoint_url=seaweedfs.endpoint, concurrency=8)
    await sink.write([SiteFile(path, body, cache_control=SHORT) for path, body in plain.items()])
    await sink.close()

    c = sample.contest
    paths = {
        "/": "index.html",
        "/app.js": "app.js",
        "/suara/snapshot.json": "suara/snapshot.json",
        f"/pemilu/hhcw/{c}.json": f"pemilu/hhcw/{c}.json",
        f"/pemilu/hhcw/{c}/{'/'.join(sample.tps_path)}.json": f"pemilu/hhcw/{c}/{'/'.join(sample.tps_path)}.json",
        f"/wilayah/pemilu/{c}/0.json": f"wilayah/pemilu/{c}/0.json",
    }
    photos = [p for p in plain if p.startswith("foto/")]
    paths.update({f"/{p}": p for p in photos[:1]})
    host = seaweedfs.endpoint.removeprefix("http://")
    async with run_nginx(
        nginx, deploy_dir / "bucket.conf", tmp_path / "nginx",
        BUCKET_HOST=host, BUCKET_SCHEME="http", BUCKET_PATH=f"/{bucket.name}/{PREFIX}",
        PHOTO_PATH=f"/{bucket.name}/{PREFIX}/foto",
        CACHE_DIR=str(tmp_path / "cache"),
    ) as url:  # fmt: skip
        first = {}
        for path, key in paths.items():
            for gzip_ok in (False, True):
                headers = {"Accept-Encoding": "gzip, deflate, br"} if gzip_ok else {}
                reply = await fetch(url + path, headers)
                assert reply.status == 200, path
                twin = f"{key}.gz" if gzip_ok and f"{key}.gz" in on_disk else None
                # One copy per object: a photo (no .gz) asked for by a gzip reader is the copy cached already.
                cached = gzip_ok and twin is None
                assert reply.headers["X-Cache-Status"] == ("HIT" if cached else "MISS"), path
                assert reply.headers["Content-Type"].startswith(content_type_for(key).split(";")[0]), path
                assert reply.headers["Cache-Control"] == SHORT, path
                assert reply.body == on_disk[twin or key], path  # the bytes the directory holds
                assert reply.headers.get("Content-Encoding") == ("gzip" if twin else None), path
                assert reply.headers["X-Content-Type-Options"] == "nosniff", path
                first[path, gzip_ok] = reply
        assert any(gz for (_, gz), r in first.items() if r.headers.get("Content-Encoding") == "gzip")
        missing = await fetch(url + "/no/such/file.json")
        assert missing.status == 404
        assert (await fetch(url + "/?list-type=2")).body == first["/", False].body  # no bucket listing

        await asyncio.to_thread(seaweedfs.stop)  # the bucket is down
        stale: set[tuple[str, bool]] = set()
        deadline = time.monotonic() + 20
        while len(stale) < len(first):
            assert time.monotonic() < deadline, f"never served stale: {set(first) - stale}"
            for (path, gzip_ok), before in first.items():
                headers = {"Accept-Encoding": "gzip"} if gzip_ok else {}
                reply = await fetch(url + path, headers)
                assert reply.status == 200, path
                assert reply.body == before.body, path
                if reply.headers["X-Cache-Status"] == "STALE":
                    stale.add((path, gzip_ok))
            await asyncio.sleep(0.2)  # between rounds of an external process's answers


async def test_bucket_conf_serves_photos_linked_in_tallys_bucket_under_the_sites_own_foto(
    nginx: str, deploy_dir: Path, tmp_path: Path, s3_endpoint: str, seaweedfs: SeaweedFS
) -> None:
    """publish links photos at SUARA_PUBLIC_URL/foto/AA/SHA256 and copies nothing: nginx reads them from
    the photo bucket where tally put them, from the page's own origin, and keeps them (they never change)."""
    del s3_endpoint  # for its AWS_* environment
    photos = await asyncio.to_thread(Bucket, seaweedfs.endpoint, "photos")
    store = S3ObjectStore(photos.name, "pemilu2024", endpoint_url=seaweedfs.endpoint)
    body = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40  # a JPEG's magic, then anything
    sha = hashlib.sha256(body).hexdigest()
    assert await store.put(sha, body, "image/jpeg")
    await store.close()
    site = await asyncio.to_thread(Bucket, seaweedfs.endpoint, "site")
    host = seaweedfs.endpoint.removeprefix("http://")
    async with run_nginx(
        nginx, deploy_dir / "bucket.conf", tmp_path / "nginx",
        BUCKET_HOST=host, BUCKET_SCHEME="http", BUCKET_PATH=f"/{site.name}/{PREFIX}",
        PHOTO_PATH=f"/{photos.name}/pemilu2024", CACHE_DIR=str(tmp_path / "cache"),
    ) as url:  # fmt: skip
        path = f"/foto/{sha[:2]}/{sha}"
        first = await fetch(url + path)
        assert first.status == 200 and first.body == body
        assert first.headers["Content-Type"] == "image/jpeg"
        assert first.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert first.headers["X-Content-Type-Options"] == "nosniff"
        assert first.headers["X-Cache-Status"] == "MISS"
        assert (await fetch(url + f"/foto/{sha[:2]}/{'0' * 64}")).status == 404
        assert (await fetch(url + path, method="DELETE")).status == 403  # readers only read
        await asyncio.to_thread(seaweedfs.stop)  # the bucket is down: the photo is still there
        again = await fetch(url + path)
        assert again.status == 200 and again.body == body
        assert again.headers["X-Cache-Status"] == "HIT"
