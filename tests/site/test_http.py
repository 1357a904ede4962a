"""`suara publish serve` (services/publish/http.py) serves the site as cache.py and gzip_static say."""

from __future__ import annotations

import gzip
from pathlib import Path

from services.publish.cache import cache_control_for, content_type_for
from services.publish.http import MISSING_CACHE_CONTROL
from tests.site.client import fetch, raw_get, security_problems
from tests.site.sample import SampleSite


def site_files(site: Path) -> list[str]:
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file() and p.suffix != ".gz")


async def test_every_file_with_the_policy_of_cache_py(sample: SampleSite, site_url: str) -> None:
    files = site_files(sample.site_dir)
    kinds = {f.split("/")[0] for f in files}
    assert {"index.html", "app.js", "app.css", "pemilu", "wilayah", "suara", "foto"} <= kinds
    for rel in files:
        body = (sample.site_dir / rel).read_bytes()
        plain = await fetch(f"{site_url}/{rel}")
        assert plain.status == 200, rel
        assert plain.body == body, rel
        assert "Content-Encoding" not in plain.headers, rel
        assert plain.headers["Cache-Control"] == cache_control_for(rel), rel
        assert plain.headers["Content-Type"] == content_type_for(rel), rel
        assert not security_problems(plain), rel

        zipped = await fetch(f"{site_url}/{rel}", {"Accept-Encoding": "gzip, deflate, br"})
        assert zipped.status == 200, rel
        assert zipped.headers["Cache-Control"] == cache_control_for(rel), rel
        assert zipped.headers["Content-Type"] == content_type_for(rel), rel
        gz = sample.site_dir / (rel + ".gz")
        if gz.exists():
            assert zipped.headers["Content-Encoding"] == "gzip", rel
            assert zipped.headers["Vary"] == "Accept-Encoding", rel
            assert plain.headers["Vary"] == "Accept-Encoding", rel
            assert zipped.body == gz.read_bytes(), rel
            assert gzip.decompress(zipped.body) == body, rel
        else:
            assert rel.startswith("foto/"), rel  # the sample compresses everything but photos
            assert "Content-Encoding" not in zipped.headers, rel
            assert zipped.body == body, rel


async def test_root_is_the_page(sample: SampleSite, site_url: str) -> None:
    reply = await fetch(site_url + "/")
    assert reply.status == 200
    assert reply.body == (sample.site_dir / "index.html").read_bytes()
    assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
    assert reply.headers["Cache-Control"] == cache_control_for("index.html")


async def test_the_gz_itself_is_a_gzip_file(sample: SampleSite, site_url: str) -> None:
    reply = await fetch(f"{site_url}/suara/snapshot.json.gz", {"Accept-Encoding": "gzip"})
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/gzip"
    assert "Content-Encoding" not in reply.headers  # else a client would unpack it into JSON
    assert reply.body == (sample.site_dir / "suara/snapshot.json.gz").read_bytes()


async def test_conditional_requests_and_head(sample: SampleSite, site_url: str) -> None:
    url = f"{site_url}/pemilu/hhcw/{sample.contest}.json"
    first = await fetch(url, {"Accept-Encoding": "gzip"})
    etag = first.headers["ETag"]
    again = await fetch(url, {"Accept-Encoding": "gzip", "If-None-Match": etag})
    assert again.status == 304
    assert again.body == b""
    assert again.headers["Cache-Control"] == cache_control_for(url.split("/", 3)[3])
    head = await fetch(url, method="HEAD")
    assert head.status == 200
    assert head.body == b""
    assert (
        int(head.headers["Content-Length"]) == (sample.site_dir / f"pemilu/hhcw/{sample.contest}.json").stat().st_size
    )


async def test_missing_is_a_short_lived_404(site_url: str) -> None:
    for rel in ("pemilu/hhcw/ppwp/99.json", "nope/", "suara/status/pdpr.json"):
        reply = await fetch(f"{site_url}/{rel}")
        assert reply.status == 404, rel
        assert reply.headers["Cache-Control"] == MISSING_CACHE_CONTROL, rel
        assert not security_problems(reply), rel


async def test_nothing_outside_the_site(sample: SampleSite, site_url: str, tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"rahasia": true}')
    (sample.site_dir / "link.json").symlink_to(secret)
    targets = [
        "/../secret.json",
        "/%2e%2e/secret.json",
        "/%2E%2E/%2E%2E/%2E%2E/etc/passwd",
        "/suara/..%2f..%2fsecret.json",
        "/wilayah/../../secret.json",
        "/..%5csecret.json",
        "//etc/passwd",
        "/link.json",  # a symlink out of the site
    ]
    for target in targets:
        assert await raw_get(site_url, target) in (400, 404), target
    # The files themselves are there, so a 404 above is the refusal and not a typo in the test.
    assert await raw_get(site_url, "/suara/snapshot.json") == 200


async def test_only_files_never_rewritten_are_immutable() -> None:
    # docs/layout.md: the history list is rewritten every snapshot, one snapshot's entry never is.
    assert "immutable" not in cache_control_for("suara/riwayat/ppwp.json")
    assert "immutable" not in cache_control_for("suara/riwayat/ppwp.json.gz")
    assert "immutable" in cache_control_for("suara/riwayat/ppwp/42.json")
    assert "immutable" in cache_control_for("foto/4f/" + "4f" * 32 + ".jpg")


def test_the_page_needs_no_inline_script_or_style_and_parses_no_data_as_html() -> None:
    """What lets the Content-Security-Policy forbid inline script and style: the page has none, and
    app.js builds its DOM from text nodes and attributes, never from markup."""
    import re

    source = Path(__file__).resolve().parents[2] / "services/publish/site"
    html = (source / "index.html").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == [], "an inline <script>"
    assert re.findall(r"<style\b|\sstyle=|\son[a-z]+=", html) == [], "inline style or an event handler attribute"
    scripts = sorted(source.glob("*.js"))
    assert [s.name for s in scripts] == ["app.js", "rekap.js"]  # rekap.js: loaded by app.js where needed
    for path in scripts:
        script = path.read_text()
        assert re.findall(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function", script) == []
        assert re.findall(r"""style=["'`]""", script) == [], ("a style attribute in markup", path.name)
