"""Rehearsals (docs/runbook.md, "Rehearsals"): a rehearsal publishes under SIMULASI everywhere and is
wiped whole; the real election, in its own database and site, publishes only its skeleton before the
first form and keeps no trace of the rehearsal.

The oracles are the registry's rows and the files on disk, read here with json and gzip; the banner
is what Chromium shows. The rehearsal gets its own database (a copy of the test template, loaded again
as a rehearsal), its own site and its own photo store.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import random
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from cli.recap_fetch import read_choices
from services.publish import SITE_ASSETS
from services.publish.rehearsal import site_sink
from services.publish.sinks.local import LocalSink
from services.publish.sinks.s3 import S3Sink
from services.tally.credentials import enroll_device
from suara.election.signing import DeviceKey
from suara.registry.catalog import fetch_election
from suara.registry.loader import RehearsalMismatch, load_registry
from suara.v1 import tally_pb2
from tests.site.cdp import Browser
from tests.support.databases import TEST_SCALE, TEST_SEED, fresh_database
from tests.support.factories import TEST_ELECTION, consistent_form, jpeg, signed
from tests.support.pki import suite_pki
from tests.support.processes import run_suara, suara_env
from tests.support.publish import Pipeline, open_pipeline, scratch_site
from tests.support.s3 import Bucket, bucket_name
from tests.support.tally import BASE_SETTINGS, with_tally

REHEARSAL = "gladi-test-01"
CONTEST = "ppwp"
SKELETON_PREFIXES = ("wilayah/pemilu/", "suara/snapshot.json", "suara/kunci-rantai.json")
USER_SCHEMAS = """SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
ORDER BY 1, 2"""


def files_of(site: Path) -> dict[str, bytes]:
    return {p.relative_to(site).as_posix(): p.read_bytes() for p in sorted(site.rglob("*")) if p.is_file()}


def present(paths: list[str]) -> list[str]:
    return [p for p in paths if Path(p).is_file()]


def digest(site: Path) -> dict[str, str]:
    return {path: hashlib.sha256(body).hexdigest() for path, body in files_of(site).items()}


async def row_counts(conn: asyncpg.Connection) -> dict[str, int]:
    """Every table of the suara schemas with its row count: what a wipe elsewhere must leave alone."""
    tables = await conn.fetch(
        "SELECT schemaname, tablename FROM pg_tables WHERE schemaname IN ('registry','tally','aggregate','publish')"
    )
    return {
        f"{t['schemaname']}.{t['tablename']}": await conn.fetchval(
            f'SELECT count(*) FROM "{t["schemaname"]}"."{t["tablename"]}"'
        )
        for t in tables
    }


async def registry_paths(conn: asyncpg.Connection) -> set[str]:
    """The region list of every area above a TPS of the registry (the national one too): the skeleton's."""
    areas = {""}
    for (code,) in await conn.fetch("SELECT code FROM registry.tps"):
        areas.update(code[:n] for n in (2, 4, 6, 10))
    nested = {a: "/".join(a[:n] for n in (2, 4, 6, 10) if n <= len(a)) for a in areas}
    return {f"wilayah/pemilu/{CONTEST}/{nested[a] or '0'}.json" for a in areas}


def marker_of(doc: Any, path: str) -> set[Any]:
    """The SIMULASI markers a document carries: its own (an object), or each of its objects' (a list, and
    the choices of `pemilu/{c}.json`, whose keys stay choice ids)."""
    if path.startswith("pemilu/") and path.count("/") == 1:
        assert doc and all(isinstance(v, dict) and "nama" in v for v in doc.values()), doc
        return {v.get("simulasi") for v in doc.values()}
    if isinstance(doc, dict):
        return {doc.get("simulasi")}
    assert isinstance(doc, list) and doc, "an empty list has nowhere to carry the marker"
    return {item.get("simulasi") if isinstance(item, dict) else None for item in doc}


@contextlib.asynccontextmanager
async def rehearsal_database(pg_server: str, template_db: str) -> AsyncIterator[str]:
    """A database of its own, its registry loaded again as rehearsal REHEARSAL (the same areas and TPS)."""
    async with fresh_database(pg_server, template_db) as url:
        conn = await asyncpg.connect(url)
        try:
            # The template's election is real: it cannot be turned into a rehearsal, even under a new id.
            with pytest.raises(RehearsalMismatch, match="never becomes a rehearsal"):
                await load_registry(
                    conn, synthetic_scale=TEST_SCALE, seed=TEST_SEED, election_id=REHEARSAL, rehearsal=True
                )
            # So the rehearsal's database starts from an empty registry, as `suara registry load --rehearsal`
            # on a freshly migrated database does.
            await conn.execute("DELETE FROM registry.load")
            summary = await load_registry(
                conn, synthetic_scale=TEST_SCALE, seed=TEST_SEED, election_id=REHEARSAL, rehearsal=True
            )
            assert (summary.election_id, summary.rehearsal) == (REHEARSAL, True)
            with pytest.raises(RehearsalMismatch, match="never becomes the real election"):
                await load_registry(conn, synthetic_scale=TEST_SCALE, seed=TEST_SEED, rehearsal=False)
        finally:
            await conn.close()
        yield url


async def send(p: Pipeline, stations: list[str], contest: str = CONTEST, photo_every: int = 0) -> list[str]:
    """One signed form of the rehearsal per station, the first (and each `photo_every`-th) with a photo; the
    photos' SHA-256."""
    stored = []
    for i, tps in enumerate(stations):
        key = DeviceKey.generate(tps, REHEARSAL)
        await enroll_device(p.db, key.device_id, tps, key.public_key, "rehearsal-test")
        form = consistent_form(tps, contest, p.choices[contest], seed=i, election_id=REHEARSAL)
        with_photo = i == 0 or (photo_every and i % photo_every == 0)
        pictures = [jpeg(random.Random(f"{tps}-{i}").randbytes(16))] if with_photo else []
        form.photo_sha256.extend(hashlib.sha256(b).hexdigest() for b in pictures)
        reply = await p.tally.stub.Submit(signed(key, form, pictures))
        assert reply.outcome == tally_pb2.OUTCOME_ACCEPTED, reply
        stored += [hashlib.sha256(b).hexdigest() for b in pictures]
    return stored


async def feed(p: Pipeline, stations: list[str], photos: Path) -> list[str]:
    """One signed form of the rehearsal per station, the first with a photo; the photos' store paths."""
    return [str(photos / sha[:2] / sha[2:4] / sha) for sha in await send(p, stations)]


def publish_env(p: Pipeline, site: Path, tmp_path: Path) -> dict[str, str]:
    """A `suara publish` child's environment for the rehearsal: a reader certificate of its election."""
    return suara_env(
        DATABASE_URL=p.db_url,
        SUARA_DATA_DIR=tmp_path / "publish-state",
        SUARA_SITE_DIR=site,
        SUARA_AGGREGATE_ADDRESS=f"127.0.0.1:{p.aggregate.internal_port}",
        SUARA_TALLY_ADDRESS=f"127.0.0.1:{p.tally.app.internal_port}",
        SUARA_PUBLISH_CREDENTIAL=suite_pki().bundle(f"publish-cli-{REHEARSAL}", "reader", REHEARSAL),
    )


async def banner_everywhere(browser: Browser, url: str, views: list[str]) -> None:
    """Every page, and every view of the main page, shows the SIMULASI banner at the top, in view."""
    for view in views:
        page = await browser.new_page(phone=True)  # a new one each: a new hash alone fires no load event
        await page.navigate(url + view)
        if not view.endswith(".html"):
            shown = view.lstrip("#") or CONTEST
            await page.wait_for(f"document.body.dataset.state === 'ready' && document.body.dataset.view === '{shown}'")
        shown = await page.evaluate(
            """(() => { const b = document.querySelector('body > p.simulasi');
                 if (!b) return null; const r = b.getBoundingClientRect();
                 return {text: b.textContent, top: r.top, h: r.height, title: document.title,
                         bg: getComputedStyle(b).backgroundColor}; })()"""
        )
        assert shown is not None, f"{view}: no SIMULASI banner"
        assert shown["text"].startswith("SIMULASI") and REHEARSAL in shown["text"], (view, shown)
        assert shown["h"] > 0 and shown["top"] < 100, (view, shown)  # shown, at the top of the page
        assert shown["bg"] != "rgba(0, 0, 0, 0)", (view, shown)  # styled by app.css, not bare text
        assert shown["title"].startswith("SIMULASI"), (view, shown)


async def test_zero_forms_publish_only_the_skeleton_and_the_page_still_opens(
    pipeline: Pipeline, browser: Browser, tmp_path: Path
) -> None:
    assert (await pipeline.cycle()) is not None
    files = files_of(pipeline.site)
    published = {p for p in files if not p.endswith(".gz")}
    assets = {p.name for p in SITE_ASSETS.iterdir() if p.is_file()}
    contests = set(pipeline.choices)
    data = published - assets - {f"pemilu/{c}.json" for c in contests}
    assert {p for p in data if not p.startswith(SKELETON_PREFIXES)} == set()  # no totals, TPS, status, NIST, history
    assert {p for p in data if p.startswith(f"wilayah/pemilu/{CONTEST}/")} == await registry_paths(pipeline.db)
    pointer = json.loads(files["suara/snapshot.json"])
    assert {c: v["progres"] for c, v in pointer["contests"].items()} == dict.fromkeys(contests, 0)
    assert not [p for p in published if p.endswith((".json", ".html")) and b"simulasi" in files[p].lower()]
    # Nothing to add until the first form: the next cycles write nothing.
    assert (await pipeline.cycle()) is None
    assert digest(pipeline.site) == {p: hashlib.sha256(b).hexdigest() for p, b in files.items()}
    # Another publisher (a restart, onto a new site directory) writes the skeleton once too.
    with scratch_site("suara-skeleton-", tmp_path) as other:
        again = pipeline.publisher_for(LocalSink(other))
        assert (await again.cycle()) is not None and (await again.cycle()) is None
        assert set(files_of(other)) == set(files)
    # The page opens on the skeleton and says there is nothing yet, without an error or a banner.
    from services.publish.http import serve_site

    async with serve_site(pipeline.site) as url:
        page = await browser.new_page(phone=True)
        await page.navigate(url + "/")
        await page.wait_for("document.body.dataset.state === 'ready'")
        shown = await page.evaluate(
            "[document.querySelectorAll('#chart [data-choice]').length, !!document.querySelector('.simulasi'),"
            " document.getElementById('progress').dataset.progres, document.getElementById('progress').dataset.total]"
        )
        tps_total = await pipeline.db.fetchval("SELECT count(*) FROM registry.tps")
        assert shown == [len(pipeline.choices[CONTEST]), False, "0", str(tps_total)]
    # The first form publishes everything.
    tps = pipeline.all_tps[0]
    await pipeline.submit(tps, CONTEST)
    assert (await pipeline.cycle()) is not None
    await pipeline.check_site(contests=(CONTEST,))


async def test_a_rehearsal_shows_simulasi_everywhere_and_is_wiped_without_a_trace(
    pg_server: str, template_db: str, pipeline: Pipeline, browser: Browser, tmp_path: Path
) -> None:
    # The real election: its own database and site, published before, during and after the rehearsal.
    assert (await pipeline.cycle()) is not None
    real_before = digest(pipeline.site)
    real_rows = await row_counts(pipeline.db)
    photos = tmp_path / "rehearsal-photos"
    settings = with_tally(BASE_SETTINGS, photo_store=str(photos))

    async with rehearsal_database(pg_server, template_db) as url:
        conn = await asyncpg.connect(url)
        try:
            with scratch_site("suara-rehearsal-", tmp_path) as site:
                async with open_pipeline(url, conn, tmp_path / "r", settings, election=REHEARSAL) as p:
                    election, rehearsal = await fetch_election(conn)
                    assert (election, rehearsal) == (REHEARSAL, True)
                    # As `suara publish run` writes it (services/publish/server.py, connect).
                    publisher = p.publisher_for(site_sink(LocalSink(site), election, rehearsal))
                    skeleton = await publisher.cycle()
                    assert skeleton is not None
                    stations = sorted(p.all_tps)[:4]
                    stored = await feed(p, stations, photos)
                    await p.delivered()
                    assert (await publisher.cycle()) is not None
                    # Another form: an incremental cycle (which compares status files read back) marks too.
                    await feed(p, sorted(p.all_tps)[-1:], photos)
                    await p.delivered()
                    assert (await publisher.cycle()) is not None
                    assert present(stored) == stored

                    # `suara publish rebuild` (publish's own wiring: connect() reads the registry) marks too.
                    rebuilt = tmp_path / "rebuilt"
                    done = await run_suara("publish", "rebuild", "--site-dir", str(rebuilt),
                                           env=publish_env(p, rebuilt, tmp_path), cwd=tmp_path)  # fmt: skip
                    assert done.returncode == 0, done.stderr
                    rebuilt_files = files_of(rebuilt)
                    assert b'<p class="simulasi"' in rebuilt_files["index.html"]
                    assert [path for path in rebuilt_files if path.endswith(".json")
                            and marker_of(json.loads(rebuilt_files[path]), path) != {REHEARSAL}] == []  # fmt: skip
                    shutil.rmtree(rebuilt)

                files = files_of(site)
                jsons = [path for path in files if path.endswith(".json")]
                assert any(path.startswith("pemilu/hhcw/") for path in jsons)  # totals and TPS files are out
                unmarked = {}
                for path in jsons:
                    markers = marker_of(json.loads(files[path]), path)
                    zipped = marker_of(json.loads(gzip.decompress(files[path + ".gz"])), path)
                    if markers | zipped != {REHEARSAL}:
                        unmarked[path] = markers | zipped
                assert unmarked == {}, f"{len(unmarked)} of {len(jsons)} JSON files unmarked: {list(unmarked)[:5]}"
                # Consumers read the choices as before (the PPK's recap tool, from a downloaded site).
                choices = read_choices(lambda path: json.loads(files[path]) if path in files else None, CONTEST)
                assert [c.id for c in choices] == p.choices[CONTEST]
                # The numbers are still the numbers, beside the marker (the TPS file of the first station).
                tps = stations[0]
                tps_file = json.loads(
                    files[f"pemilu/hhcw/{CONTEST}/{tps[:2]}/{tps[:4]}/{tps[:6]}/{tps[:10]}/{tps}.json"]
                )
                form = consistent_form(tps, CONTEST, p.choices[CONTEST], seed=0, election_id=REHEARSAL)
                assert {c: tps_file["chart"][c] for c in p.choices[CONTEST]} == dict(form.votes)

                from services.publish.http import serve_site

                async with serve_site(site) as site_url:
                    path = "#" + "/".join([CONTEST, *(tps[:n] for n in (2, 4, 6, 10, 13))])
                    await banner_everywhere(
                        browser,
                        site_url + "/",
                        ["", f"#{CONTEST}/{tps[:2]}", f"#{CONTEST}/{tps[:2]}/{tps[:4]}", path, "data.html"],
                    )
                    page = await browser.new_page(phone=False)
                    await page.navigate(site_url + "/")
                    await page.wait_for("document.body.dataset.state === 'ready'")
                    # The marker is no candidate: the chart has the contest's choices, no more.
                    rows = await page.evaluate(
                        "[...document.querySelectorAll('#chart [data-choice]')].map(e => e.dataset.choice)"
                    )
                    assert sorted(rows) == sorted(p.choices[CONTEST])

                env = suara_env(DATABASE_URL=url, SUARA_SITE_DIR=site, SUARA_PHOTO_STORE=photos,
                                SUARA_DATA_DIR=tmp_path / "state")  # fmt: skip
                real_env = suara_env(DATABASE_URL=pipeline.db_url, SUARA_SITE_DIR=pipeline.site,
                                     SUARA_PHOTO_STORE=photos, SUARA_DATA_DIR=tmp_path / "state")  # fmt: skip
                # Refused: the real election (even named), another id; without --yes it only says what it would do.
                done = await run_suara("rehearsal", "wipe", "--election-id", TEST_ELECTION, "--yes",
                                       env=real_env, cwd=tmp_path)  # fmt: skip
                assert done.returncode == 2 and "real election" in done.stderr, done
                done = await run_suara(
                    "rehearsal", "wipe", "--election-id", "gladi-lain", "--yes", env=env, cwd=tmp_path
                )
                assert done.returncode == 2 and "not 'gladi-lain'" in done.stderr, done
                # The rehearsal's database, with the real site as its site: refused, the site is not marked.
                wrong_site = env | {"SUARA_SITE_DIR": str(pipeline.site)}
                done = await run_suara(
                    "rehearsal", "wipe", "--election-id", REHEARSAL, "--yes", env=wrong_site, cwd=tmp_path
                )
                assert done.returncode == 2 and "do not carry the SIMULASI marker" in done.stderr, done
                done = await run_suara("rehearsal", "wipe", "--election-id", REHEARSAL, env=env, cwd=tmp_path)
                assert done.returncode == 1 and "add --yes" in done.stdout, done
                assert files_of(site) == files
                done = await run_suara("rehearsal", "wipe", "--election-id", REHEARSAL, "--yes", env=env, cwd=tmp_path)
                assert done.returncode == 0, done

                assert list(site.rglob("*")) == []  # every file and directory of its site
                assert present(stored) == []  # its photos
                assert await conn.fetch(USER_SCHEMAS) == []  # no table left: as before `suara db migrate`
        finally:
            await conn.close()

    # The real election: not a byte of its site changed, not a row of its database.
    assert digest(pipeline.site) == real_before
    assert await row_counts(pipeline.db) == real_rows
    data = {p: b for p, b in files_of(pipeline.site).items() if p.endswith((".json", ".html"))}
    assert [p for p, b in data.items() if b"simulasi" in b.lower() or REHEARSAL.encode() in b] == []
    assert (await fetch_election(pipeline.db)) == (TEST_ELECTION, False)


async def test_a_rehearsal_in_buckets_is_wiped_there_and_the_real_site_beside_it_stays(
    pg_server: str, template_db: str, pipeline: Pipeline, s3_endpoint: str, tmp_path: Path
) -> None:
    """A rehearsal published to a bucket (SUARA_PUBLISH_TO=s3://…), its photos in another (SUARA_PHOTO_STORE=
    s3://…), both on SeaweedFS. The real election's site is in the same bucket under a prefix that begins
    with the rehearsal's (`gladi` and `gladi-nyata`), and the real election's photos in the same photo
    bucket: the wipe refuses the real site, and then erases the rehearsal's objects and none of the rest.
    The oracle is the buckets' listings and ETags, read with a boto3 client of the test's own."""
    contest = "pkwkp"  # one province: a few hundred objects
    site_bucket = await asyncio.to_thread(Bucket, s3_endpoint, bucket_name("gladi-site", tmp_path))
    photo_bucket = await asyncio.to_thread(Bucket, s3_endpoint, bucket_name("gladi-foto", tmp_path))
    for bucket in (site_bucket, photo_bucket):  # SeaweedFS grows a bucket's first volume on its first write
        await asyncio.to_thread(bucket.client.put_object, Bucket=bucket.name, Key="warm-up", Body=b"")

    # The real election, published to `gladi-nyata/`, with a photo of its own in the photo bucket.
    await pipeline.submit(pipeline.tally_codes(contest)[0], contest)
    real = pipeline.publisher_for(S3Sink(site_bucket.name, "gladi-nyata", endpoint_url=s3_endpoint), (contest,))
    await pipeline.delivered()
    assert await real.cycle(full=True) is not None
    await real.bulk_done()
    real_photo = jpeg(b"the real election's")
    real_key = f"gladi/{hashlib.sha256(real_photo).hexdigest()[:2]}/{hashlib.sha256(real_photo).hexdigest()}"
    await asyncio.to_thread(photo_bucket.client.put_object, Bucket=photo_bucket.name, Key=real_key, Body=real_photo)

    store = f"s3://{photo_bucket.name}/gladi"
    settings = with_tally(BASE_SETTINGS, photo_store=store, photo_store_endpoint_url=s3_endpoint)
    async with rehearsal_database(pg_server, template_db) as url:
        conn = await asyncpg.connect(url)
        try:
            async with open_pipeline(url, conn, tmp_path / "r", settings, election=REHEARSAL) as p:
                sink = S3Sink(site_bucket.name, "gladi", endpoint_url=s3_endpoint)
                publisher = p.publisher_for(site_sink(sink, REHEARSAL, True), (contest,))
                assert await publisher.cycle() is not None  # the skeleton
                shas = await send(p, p.tally_codes(contest)[:6], contest, photo_every=2)
                await p.delivered()
                assert await publisher.cycle() is not None
                await publisher.bulk_done()
            # Its photos are in the photo bucket, and copied into its site (publish copies them from tally).
            photo_keys = {f"gladi/{sha[:2]}/{sha}" for sha in shas}
            assert len(photo_keys) >= 3 and photo_keys <= set(photo_bucket.etags())
            objects = site_bucket.etags()
            mine = {k for k in objects if k.startswith("gladi/")}
            assert any(k.startswith("gladi/foto/") for k in mine) and "gladi/index.html" in mine
            assert any(k.startswith("gladi/suara/unduh/") for k in mine)
            others = {k: v for k, v in objects.items() if k not in mine}
            assert any(k.startswith("gladi-nyata/pemilu/") for k in others)
            photos_before = photo_bucket.etags()

            env = suara_env(DATABASE_URL=url, SUARA_PUBLISH_TO=f"s3://{site_bucket.name}/gladi",
                            SUARA_S3_ENDPOINT_URL=s3_endpoint, SUARA_PHOTO_STORE=store,
                            SUARA_PHOTO_STORE_ENDPOINT_URL=s3_endpoint, SUARA_DATA_DIR=tmp_path / "state")  # fmt: skip
            wipe = ("rehearsal", "wipe", "--election-id", REHEARSAL)
            # The real site as the rehearsal's, or the whole bucket (which holds it): refused, nothing erased.
            for target in (f"s3://{site_bucket.name}/gladi-nyata", f"s3://{site_bucket.name}"):
                done = await run_suara(*wipe, "--yes", env=env | {"SUARA_PUBLISH_TO": target}, cwd=tmp_path)
                assert done.returncode == 2 and "do not carry the SIMULASI marker" in done.stderr, done
            done = await run_suara(*wipe, env=env, cwd=tmp_path)
            assert done.returncode == 1 and f"{len(mine):,} files of s3://{site_bucket.name}/gladi" in done.stdout
            assert f"{len(photo_keys):,} photos of {store}" in done.stdout, done
            assert site_bucket.etags() == objects and photo_bucket.etags() == photos_before

            done = await run_suara(*wipe, "--yes", env=env, cwd=tmp_path)
            assert done.returncode == 0, done
            assert site_bucket.etags() == others  # not one object of the real site (nor the warm-up) went
            assert photo_bucket.etags() == {k: v for k, v in photos_before.items() if k not in photo_keys}
            assert real_key in photo_bucket.etags()  # a photo its database does not record stays, even in its store
            assert await conn.fetch(USER_SCHEMAS) == []
        finally:
            await conn.close()
    assert (await fetch_election(pipeline.db)) == (TEST_ELECTION, False)
