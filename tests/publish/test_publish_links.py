"""A full cycle links every "no data yet" TPS file of a contest to `suara/kosong/{contest}.json`.

Which TPS have no data comes from the oracle (tests/support/oracles/publish.py: the forms tally acknowledged),
not from the publisher; the bytes are checked against the oracle with its own site check; the sharing
with `os.stat` (inode numbers, link counts). Through an S3 sink, which cannot link, every object must
still hold the whole file: the bucket, read back with a client of the test's own, must equal the oracle.
"""

from __future__ import annotations

import gzip
import random
from pathlib import Path
from typing import Any

from services.publish.sinks.s3 import S3Sink
from tests.support.oracles.publish import Registry, compare, expected_site
from tests.support.publish import Pipeline
from tests.support.s3 import Bucket, bucket_name

CONTESTS = ("ppwp", "pdpr", "pkwkp")


def _template(contest: str) -> str:
    return f"suara/kosong/{contest}.json"


async def _tps_files(pipeline: Pipeline, contest: str) -> tuple[dict[str, Any], list[str], list[str]]:
    """The oracle's site for `contest`, and its TPS files without data and with data."""
    expected = expected_site(await Registry.read(pipeline.db), contest, pipeline.current, pipeline.photo_types())
    tps = [p for p in expected if p.startswith(f"pemilu/hhcw/{contest}/") and len(Path(p).stem) == 13]
    empty = [p for p in tps if expected[p]["chart"] is None]
    return expected, empty, [p for p in tps if p not in empty]


def _check_gz(site: Path, path: str) -> None:
    assert gzip.decompress((site / (path + ".gz")).read_bytes()) == (site / path).read_bytes(), path


async def _check_links(pipeline: Pipeline, contest: str) -> tuple[list[str], list[str]]:
    site = pipeline.site
    expected, empty, with_data = await _tps_files(pipeline, contest)
    assert empty and with_data, "the night should leave TPS with and without data"
    template = _template(contest)
    # The template is the oracle's no-data TPS file (its ts checked for format, as every ts is).
    assert not compare(site, {template: expected[empty[0]]})
    _check_gz(site, template)
    inode, gz_inode = (site / template).stat().st_ino, (site / (template + ".gz")).stat().st_ino
    for path in empty:
        assert (site / path).stat().st_ino == inode, path
        assert (site / (path + ".gz")).stat().st_ino == gz_inode, path
    assert (site / template).stat().st_nlink == 1 + len(empty)
    assert (site / (template + ".gz")).stat().st_nlink == 1 + len(empty)
    for path in with_data:
        assert (site / path).stat().st_nlink == 1, path
        assert (site / (path + ".gz")).stat().st_nlink == 1, path
        _check_gz(site, path)
    return empty, with_data


async def test_a_full_cycle_links_the_no_data_tps_files_to_the_contest_template(pipeline: Pipeline) -> None:
    rng = random.Random(11)
    await pipeline.random_night(rng, 30)
    await pipeline.random_night(rng, 10, contest="pdpr")
    await pipeline.random_night(rng, 10, contest="pkwkp")
    first = await pipeline.cycle()
    assert first is not None and first.full
    await pipeline.check_site()  # every file, linked or not, equals the oracle
    for contest in CONTESTS:
        await _check_links(pipeline, contest)

    # One TPS without data gets its form: an incremental cycle replaces that file alone.
    site = pipeline.site
    _, empty, _ = await _tps_files(pipeline, "ppwp")
    template = _template("ppwp")
    before = (site / template).read_bytes(), (site / (template + ".gz")).read_bytes()
    links = (site / template).stat().st_nlink
    tps_path = empty[len(empty) // 2]
    await pipeline.submit(Path(tps_path).stem, "ppwp", 1, seed=5)
    second = await pipeline.cycle()
    assert second is not None and not second.full
    await pipeline.check_site()
    assert ((site / template).read_bytes(), (site / (template + ".gz")).read_bytes()) == before
    assert (site / template).stat().st_nlink == links - 1
    assert (site / tps_path).stat().st_nlink == 1
    assert (site / tps_path).read_bytes() != before[0]
    for path in empty:
        if path != tps_path:
            assert (site / path).read_bytes() == before[0], path
    await _check_links(pipeline, "ppwp")

    # A rebuild over the site: links made over existing files (linked or written), all still the oracle's.
    third = await pipeline.cycle(full=True)
    assert third is not None and third.full
    await pipeline.check_site()
    for contest in CONTESTS:
        await _check_links(pipeline, contest)
    assert not [f for f in site.rglob("*") if f.name.endswith(".tmp")]


async def test_a_full_cycle_to_s3_puts_whole_no_data_tps_files(
    pipeline: Pipeline, s3_endpoint: str, tmp_path: Path
) -> None:
    """Against SeaweedFS's S3 gateway; one contest (pkwkp), as in test_s3_publish."""
    contest = "pkwkp"
    await pipeline.random_night(random.Random(12), 15, contest=contest)
    await pipeline.delivered()
    bucket = Bucket(s3_endpoint, bucket_name("kosong", tmp_path))
    result = await pipeline.publisher_for(
        S3Sink(bucket.name, endpoint_url=s3_endpoint, concurrency=8), (contest,)
    ).cycle(full=True)
    assert result is not None and result.full

    # The bucket, copied into a directory, against the oracle.
    copy = tmp_path / "from-s3"
    for key, obj in (await bucket.get_many(sorted(bucket.etags()))).items():
        (copy / key).parent.mkdir(parents=True, exist_ok=True)
        (copy / key).write_bytes(obj.body)
    expected, empty, with_data = await _tps_files(pipeline, contest)
    assert empty and with_data
    problems = compare(copy, expected)
    assert not problems, f"{len(problems)} differences, first: " + "\n".join(problems[:5])
    template = (copy / _template(contest)).read_bytes()
    assert not compare(copy, {_template(contest): expected[empty[0]]})
    for path in [_template(contest), *empty, *with_data]:
        _check_gz(copy, path)
    for path in empty:
        assert (copy / path).read_bytes() == template, path
