"""The content-addressed object store (where form photos live): a directory, or a real S3 server (SeaweedFS)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from suara.runtime.objects import LocalObjectStore, ObjectStoreError, S3ObjectStore, open_store, photo_store
from suara.runtime.settings import SettingError, Settings, TallySettings
from tests.support.factories import jpeg, png
from tests.support.s3 import Bucket, bucket_name


def _sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _files(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file())


def _written(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


async def test_a_directory_store_keeps_each_body_under_its_hash(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "photos")
    bodies = [jpeg(b"one"), png(b"two")]
    try:
        for body in bodies:
            assert await store.put(_sha(body), body, "image/jpeg") is True
        for body in bodies:
            assert await store.get(_sha(body)) == body
            sha = _sha(body)
            assert (tmp_path / "photos" / sha[:2] / sha[2:4] / sha).read_bytes() == body
        assert await store.get(_sha(b"never stored")) is None
        # Nothing but the objects: no temporary file outlives its put.
        assert _files(tmp_path / "photos") == sorted(_sha(b) for b in bodies)
    finally:
        await store.close()


async def test_a_second_put_of_a_key_is_a_no_op(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    body = jpeg(b"same photo twice")
    try:
        assert await store.put(_sha(body), body, "image/jpeg") is True
        before = _written(store.path(_sha(body)))
        assert await store.put(_sha(body), body, "image/jpeg") is False
        assert _written(store.path(_sha(body))) == before  # not rewritten
    finally:
        await store.close()


async def test_a_body_is_stored_only_under_its_own_hash(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    try:
        with pytest.raises(ValueError, match="does not have the SHA-256"):
            await store.put(_sha(b"another body"), b"this body", "image/jpeg")
        with pytest.raises(ValueError, match="64 lowercase hex"):
            await store.put("../../etc/passwd", b"x", "image/jpeg")
        with pytest.raises(ValueError, match="64 lowercase hex"):
            await store.get(_sha(b"x").upper())
        assert _files(tmp_path) == []
    finally:
        await store.close()


async def test_an_unwritable_store_is_a_store_error_not_a_crash(tmp_path: Path) -> None:
    root = tmp_path / "a-file"  # where the directory should be, a file: every write fails, even as root
    root.write_bytes(b"")
    store = LocalObjectStore(root)
    try:
        with pytest.raises(ObjectStoreError, match="cannot write"):
            await store.put(_sha(b"x"), b"x", "image/jpeg")
        with pytest.raises(ObjectStoreError, match="cannot read"):
            await store.get(_sha(b"x"))
    finally:
        await store.close()


async def test_the_photo_store_setting_picks_the_store(tmp_path: Path) -> None:
    default = photo_store(Settings(data_dir=tmp_path / "data"))
    assert isinstance(default, LocalObjectStore) and default.root == tmp_path / "data" / "photos"
    await default.close()
    s3 = photo_store(
        Settings(
            tally=TallySettings(photo_store="s3://suara-photos/night", photo_store_endpoint_url="http://127.0.0.1:1")
        )
    )
    assert isinstance(s3, S3ObjectStore) and s3.describe() == "s3://suara-photos/night via http://127.0.0.1:1"
    await s3.close()
    blocked = tmp_path / "a-file"
    blocked.write_bytes(b"")
    with pytest.raises(SettingError, match=r"^SUARA_PHOTO_STORE=.*a writable directory"):
        photo_store(Settings(tally=TallySettings(photo_store=str(blocked / "photos"))))


async def test_an_s3_store_round_trips_and_a_second_put_is_a_no_op(s3_endpoint: str, tmp_path: Path) -> None:
    bucket = Bucket(s3_endpoint, bucket_name("photos", tmp_path))
    store = open_store(f"s3://{bucket.name}/night/", s3_endpoint)
    body = png(b"a page of the form")
    sha = _sha(body)
    try:
        assert await store.put(sha, body, "image/png") is True
        assert await store.get(sha) == body
        stored = bucket.client.get_object(Bucket=bucket.name, Key=f"night/{sha[:2]}/{sha}")  # the test's own client
        assert (stored["Body"].read(), stored["ContentType"]) == (body, "image/png")
        etags = bucket.etags()
        assert await store.put(sha, body, "image/png") is False
        assert bucket.etags() == etags
        assert await store.get(_sha(b"never stored")) is None
        with pytest.raises(ValueError, match="does not have the SHA-256"):
            await store.put(sha, b"other bytes", "image/png")
    finally:
        await store.close()


async def test_an_s3_store_that_refuses_is_a_store_error_not_a_crash(
    s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = Bucket(s3_endpoint, bucket_name("refused", tmp_path))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store = open_store(f"s3://{bucket.name}", s3_endpoint)
    body = jpeg(b"x")
    try:
        with pytest.raises(ObjectStoreError, match="cannot write"):
            await store.put(_sha(body), body, "image/jpeg")
        with pytest.raises(ObjectStoreError, match="cannot read"):
            await store.get(_sha(body))
    finally:
        await store.close()
    assert bucket.etags() == {}
