"""`SiteFile.same_as`: LocalSink hard-links a file identical to one already in the site; S3Sink writes it.

Checked with plain file reads, `gzip.decompress` and `os.stat` (inode numbers and link counts), never
with the sink's own code: what reads back must be each file's body and its `.gz`, whether linked or not.
"""

from __future__ import annotations

import errno
import gzip
import os
from pathlib import Path
from typing import Any

import pytest

from services.publish.files import SiteFile
from services.publish.sinks.local import LocalSink
from services.publish.sinks.s3 import S3Sink
from tests.support.s3 import Bucket, bucket_name

TEMPLATE = "suara/kosong/ppwp.json"
BODY = b'{"mode":"hhcw","chart":null,"images":[null,null,null],"administrasi":null,"ts":"2024-02-14 07:00:00"}'
TPS = [f"pemilu/hhcw/ppwp/31/3101/310101/3101011001/3101011001{i:03d}.json" for i in range(1, 7)]


def _all_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _check_bytes(root: Path, path: str, body: bytes) -> None:
    """The file holds `body`, and its .gz decompresses to it (gzip with mtime 0 at level 9, as published)."""
    assert (root / path).read_bytes() == body, path
    gz = (root / (path + ".gz")).read_bytes()
    assert gzip.decompress(gz) == body, path
    assert gz == gzip.compress(body, compresslevel=9, mtime=0), path


def _inode(root: Path, path: str) -> int:
    return (root / path).stat().st_ino


async def _with_template(root: Path, **kwargs: Any) -> LocalSink:
    sink = LocalSink(root, **kwargs)
    await sink.write([SiteFile(TEMPLATE, BODY)])
    return sink


async def test_same_as_links_the_file_and_its_gz_to_the_template(tmp_path: Path) -> None:
    sink = await _with_template(tmp_path, chunk=2)  # several chunks, in parallel
    await sink.write([SiteFile(p, BODY, same_as=TEMPLATE) for p in TPS])

    for path in TPS:
        _check_bytes(tmp_path, path, BODY)
        assert _inode(tmp_path, path) == _inode(tmp_path, TEMPLATE)
        assert _inode(tmp_path, path + ".gz") == _inode(tmp_path, TEMPLATE + ".gz")
    assert (tmp_path / TEMPLATE).stat().st_nlink == 1 + len(TPS)
    assert (tmp_path / (TEMPLATE + ".gz")).stat().st_nlink == 1 + len(TPS)
    _check_bytes(tmp_path, TEMPLATE, BODY)
    assert oct((tmp_path / TPS[0]).stat().st_mode & 0o777) == oct((tmp_path / TEMPLATE).stat().st_mode & 0o777)
    # Nothing else: no temp file left behind.
    assert _all_files(tmp_path) == {p + s for p in [TEMPLATE, *TPS] for s in ("", ".gz")}


async def test_a_linked_file_rewritten_later_leaves_the_template_and_the_other_links_alone(tmp_path: Path) -> None:
    sink = await _with_template(tmp_path)
    await sink.write([SiteFile(p, BODY, same_as=TEMPLATE) for p in TPS])
    template_inode = _inode(tmp_path, TEMPLATE)

    data = b'{"mode":"hhcw","chart":{"null":null,"100025":83},"ts":"2024-02-14 21:00:00"}'
    await sink.write([SiteFile(TPS[0], data)])  # the TPS got its form

    _check_bytes(tmp_path, TPS[0], data)
    assert _inode(tmp_path, TPS[0]) != template_inode
    assert _inode(tmp_path, TPS[0] + ".gz") != _inode(tmp_path, TEMPLATE + ".gz")
    _check_bytes(tmp_path, TEMPLATE, BODY)
    for path in TPS[1:]:
        _check_bytes(tmp_path, path, BODY)
        assert _inode(tmp_path, path) == template_inode
    assert (tmp_path / TEMPLATE).stat().st_nlink == len(TPS)  # one link fewer
    assert (tmp_path / (TEMPLATE + ".gz")).stat().st_nlink == len(TPS)

    # A new template (the next rebuild, another `ts`) replaces the old one's entry, not its bytes.
    new_body = BODY.replace(b"07:00:00", b"08:00:00")
    await sink.write([SiteFile(TEMPLATE, new_body)])
    _check_bytes(tmp_path, TEMPLATE, new_body)
    for path in TPS[1:]:
        _check_bytes(tmp_path, path, BODY)
    await sink.write([SiteFile(p, new_body, same_as=TEMPLATE) for p in TPS])  # linked over existing files
    for path in TPS:
        _check_bytes(tmp_path, path, new_body)
        assert _inode(tmp_path, path) == _inode(tmp_path, TEMPLATE)
    assert _all_files(tmp_path) == {p + s for p in [TEMPLATE, *TPS] for s in ("", ".gz")}


async def test_linked_gz_lands_before_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = await _with_template(tmp_path, chunk=2)
    appeared: list[str] = []
    real_replace = os.replace

    def recording_replace(src: str, dst: str) -> None:
        real_replace(src, dst)
        appeared.append(Path(dst).relative_to(tmp_path).as_posix())

    monkeypatch.setattr(os, "replace", recording_replace)
    await sink.write([SiteFile(p, BODY, same_as=TEMPLATE) for p in TPS])
    assert sorted(appeared) == sorted(p + s for p in TPS for s in ("", ".gz"))
    for path in TPS:
        assert appeared.index(path + ".gz") < appeared.index(path)


async def test_without_the_template_the_body_is_written(tmp_path: Path) -> None:
    sink = LocalSink(tmp_path)
    await sink.write([SiteFile(p, BODY, same_as=TEMPLATE) for p in TPS])
    for path in TPS:
        _check_bytes(tmp_path, path, BODY)
        assert (tmp_path / path).stat().st_nlink == 1
    assert _all_files(tmp_path) == {p + s for p in TPS for s in ("", ".gz")}


async def test_a_template_with_other_bytes_is_not_linked(tmp_path: Path) -> None:
    """`body` is the truth: a template that does not hold it (or whose .gz is not its .gz) is not used."""
    sink = await _with_template(tmp_path)
    other = BODY.replace(b"07:00:00", b"09:00:00")
    await sink.write([SiteFile(TPS[0], other, same_as=TEMPLATE)])
    _check_bytes(tmp_path, TPS[0], other)
    assert (tmp_path / TPS[0]).stat().st_nlink == 1

    (tmp_path / (TEMPLATE + ".gz")).write_bytes(gzip.compress(BODY, compresslevel=1, mtime=0))  # not the same bytes
    await sink.write([SiteFile(TPS[1], BODY, same_as=TEMPLATE)])
    _check_bytes(tmp_path, TPS[1], BODY)
    assert _inode(tmp_path, TPS[1]) == _inode(tmp_path, TEMPLATE)  # the file is still linked, its .gz written
    assert (tmp_path / (TPS[1] + ".gz")).stat().st_nlink == 1


async def test_a_template_written_in_the_same_call_is_not_linked(tmp_path: Path) -> None:
    """Within one call files land in any order: the template may not be there yet, or be an old one."""
    sink = LocalSink(tmp_path)
    await sink.write([SiteFile(TEMPLATE, b'{"old":1}')])
    await sink.write([SiteFile(TEMPLATE, BODY), *(SiteFile(p, BODY, same_as=TEMPLATE) for p in TPS)])
    for path in [TEMPLATE, *TPS]:
        _check_bytes(tmp_path, path, BODY)
        assert (tmp_path / path).stat().st_nlink == 1


@pytest.mark.parametrize("code", [errno.EXDEV, errno.EPERM, errno.ENOENT])
async def test_when_linking_fails_the_body_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    sink = await _with_template(tmp_path, chunk=2)

    def failing_link(src: str, dst: str) -> None:
        raise OSError(code, os.strerror(code), src)

    monkeypatch.setattr(os, "link", failing_link)
    await sink.write([SiteFile(p, BODY, same_as=TEMPLATE) for p in TPS])
    for path in TPS:
        _check_bytes(tmp_path, path, BODY)
        assert (tmp_path / path).stat().st_nlink == 1
    assert (tmp_path / TEMPLATE).stat().st_nlink == 1
    assert _all_files(tmp_path) == {p + s for p in [TEMPLATE, *TPS] for s in ("", ".gz")}


async def test_a_template_with_too_many_links_hands_over_to_a_written_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ext4 allows 65,000 links per inode and a contest has up to ~800k TPS: when the template is full
    (EMLINK), the next file is written whole and the following ones are linked to it."""
    sink = await _with_template(tmp_path, chunk=len(TPS))  # one chunk: files in order
    template = str(tmp_path / TEMPLATE)
    real_link = os.link
    refused: list[str] = []

    def full_template(src: str, dst: str) -> None:
        if src in (template, template + ".gz"):
            refused.append(src)
            raise OSError(errno.EMLINK, os.strerror(errno.EMLINK), src)
        real_link(src, dst)

    monkeypatch.setattr(os, "link", full_template)
    await sink.write([SiteFile(p, BODY, same_as=TEMPLATE) for p in TPS])
    assert refused == [template + ".gz", template], "asked once each, then the copy is used"
    for path in TPS:
        _check_bytes(tmp_path, path, BODY)
    assert (tmp_path / TEMPLATE).stat().st_nlink == 1
    for path in TPS[1:]:
        assert _inode(tmp_path, path) == _inode(tmp_path, TPS[0])
        assert _inode(tmp_path, path + ".gz") == _inode(tmp_path, TPS[0] + ".gz")
    assert (tmp_path / TPS[0]).stat().st_nlink == len(TPS)

    # A later call starts from the template again: the copy may have been rewritten since.
    data = b'{"chart":{"100025":1}}'
    await sink.write([SiteFile(TPS[0], data)])
    monkeypatch.setattr(os, "link", real_link)
    await sink.write([SiteFile(p, BODY, same_as=TEMPLATE) for p in TPS[1:]])
    for path in TPS[1:]:
        _check_bytes(tmp_path, path, BODY)
        assert _inode(tmp_path, path) == _inode(tmp_path, TEMPLATE)
    _check_bytes(tmp_path, TPS[0], data)


def test_same_as_stays_inside_the_site() -> None:
    with pytest.raises(ValueError):
        SiteFile(TPS[0], BODY, same_as="../outside.json")
    with pytest.raises(ValueError):
        SiteFile(TPS[0], BODY, same_as="/etc/passwd")


# --- S3Sink: cannot link, writes the body --------------------------------------------------------------


async def test_s3_writes_the_body_of_a_file_with_same_as(s3_endpoint: str, tmp_path: Path) -> None:
    """Against SeaweedFS's S3 gateway (tests/support/s3.py)."""
    bucket = bucket_name("links", tmp_path)
    oracle = Bucket(s3_endpoint, bucket).client
    sink = S3Sink(bucket, endpoint_url=s3_endpoint, concurrency=2)
    await sink.write([SiteFile(TEMPLATE, BODY)])
    # The second file names a template that is not there: an S3 sink never looks.
    await sink.write([SiteFile(TPS[0], BODY, same_as=TEMPLATE), SiteFile(TPS[1], BODY, same_as="suara/none.json")])
    for path in (TEMPLATE, TPS[0], TPS[1]):
        assert oracle.get_object(Bucket=bucket, Key=path)["Body"].read() == BODY
        gz = oracle.get_object(Bucket=bucket, Key=path + ".gz")
        assert gz["ContentEncoding"] == "gzip"
        assert gzip.decompress(gz["Body"].read()) == BODY
    await sink.close()
