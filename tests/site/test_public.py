"""The public page as a citizen or a journalist meets it, in Debian's chromium at desktop and phone widths:
form photos large and opening full size, no sideways scrolling at 360 px, every area's data one link
away, the chain head explained. Screenshots of every view at every width go to the artifacts
directory (test-artifacts/ at the repository root).

The oracles are the forms and photos the test sent (through tally, aggregate and one publish cycle)
and the published files read from disk, never what the page computes.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from loadtest.photos import form_photos
from tests.site.cdp import Browser, CDPError, Page
from tests.site.real import build_real_site
from tests.site.sample import SampleSite
from tests.support.factories import consistent_form
from tests.support.oracles.publish import Accepted
from tests.support.publish import Pipeline

# (name, CSS px wide, high, a phone?)
WIDTHS = [("desktop", 1280, 900, False), ("phone390", 390, 844, True), ("phone360", 360, 740, True)]
FIRST_LOAD_BUDGET = 60_000
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Public:
    sample: SampleSite
    photo_tps: tuple[str, ...]  # province … TPS codes of a TPS that sent three real form photos
    photos: list[bytes]  # what it sent, in page order
    current: dict[tuple[str, str], Accepted]  # (tps, contest) -> the form tally acknowledged last


@pytest.fixture
async def public(pipeline: Pipeline) -> Public:
    sample = await build_real_site(pipeline)
    c = sample.contest
    tps = next(t for t in pipeline.all_tps if (t, c) not in pipeline.current and t != sample.no_data_tps)
    candidates = json.loads((sample.site_dir / f"pemilu/{c}.json").read_text())
    names = {k: v["nama"] for k, v in sorted(candidates.items(), key=lambda kv: kv[1]["nomor_urut"])}
    # The form Pipeline.submit signs for this seed, photographed (loadtest/photos.py), sent with it.
    photos = form_photos(consistent_form(tps, c, pipeline.choices[c], 1, seed=7), names)
    await pipeline.submit(tps, c, 1, seed=7, photos=photos)
    await pipeline.cycle()
    return Public(sample, tuple(tps[:n] for n in (2, 4, 6, 10, 13)), photos, pipeline.current)


@pytest.fixture
def sample(public: Public) -> SampleSite:
    """The site `site_url` serves (tests/site/conftest.py): the one the pipeline wrote."""
    return public.sample


async def sized_page(browser: Browser, width: int, height: int, mobile: bool, *, network: bool = False) -> Page:
    page = await browser.new_page(network=network, phone=False)
    await page.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
    )
    if network:  # every page a first visit: nothing from the HTTP cache an earlier page filled
        await page.send("Network.setCacheDisabled", {"cacheDisabled": True})
    return page


async def show(page: Page, url: str, view: str | None) -> None:
    """Open `url`; on the page already, only its hash changes (which fires no load event)."""
    base, _, fragment = url.partition("#")
    here = await page.evaluate("location.href.split('#')[0]")
    if view is not None and here == base + ("" if base.endswith("/") else "/") and fragment:
        await page.evaluate(f"location.hash = {json.dumps('#' + fragment)}")
    else:
        await page.navigate(url)
    if view is not None:
        await ready(page, view)


async def ready(page: Page, view: str) -> None:
    try:
        await page.wait_for(
            f"document.body.dataset.state === 'ready' && document.body.dataset.view === {json.dumps(view)}"
        )
    except CDPError as exc:
        state = await page.evaluate(
            "[location.hash, document.body.dataset.state, document.body.dataset.view, error.textContent]"
        )
        raise AssertionError(f"{view} not shown: {state}, console {page.console}") from exc


OVERFLOW = """(() => {
  const w = document.documentElement.clientWidth;
  const cut = [...document.querySelectorAll('body *')].filter(e => {
    const r = e.getBoundingClientRect();
    return r.width > 0 && (r.right > w + 0.5 || r.left < -0.5);
  }).map(e => e.tagName + '.' + e.className + ' ' + (e.textContent || '').trim().slice(0, 30));
  return {scroll: document.documentElement.scrollWidth, client: w, cut: cut.slice(0, 8)};
})()"""


async def fetch(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(url) as reply:
        assert reply.status == 200, url
        return await reply.read()


def views(public: Public) -> dict[str, str]:
    c = public.sample.contest
    path = public.photo_tps
    out = {"national": c}
    for name, depth in (("province", 1), ("kabupaten", 2), ("kecamatan", 3), ("desa", 4), ("tps", 5)):
        out[name] = "/".join((c, *path[:depth]))
    return out


async def test_every_view_fits_a_phone_and_tps_photos_open_full_size(
    public: Public, site_url: str, browser: Browser, artifacts: Path
) -> None:
    sent = [hashlib.sha256(p).hexdigest() for p in public.photos]
    tps_file = json.loads(
        (public.sample.site_dir / f"pemilu/hhcw/{'/'.join(views(public)['tps'].split('/'))}.json").read_text()
    )
    assert [Path(i).stem for i in tps_file["images"]] == sent  # the TPS file names the photos sent, in order
    async with aiohttp.ClientSession() as session:
        for name, width, height, mobile in WIDTHS:
            page = await sized_page(browser, width, height, mobile)
            for view_name, view in views(public).items():
                await show(page, f"{site_url}/#{view}", view)
                if view_name == "tps":
                    # Lazy images load as they come into view: bring each in, wait until it is decoded.
                    for i in range(len(sent)):
                        await page.evaluate(f"document.querySelectorAll('.photos img')[{i}].scrollIntoView()")
                        await page.wait_for(
                            f"(() => {{ const i = document.querySelectorAll('.photos img')[{i}];"
                            " return i.complete && i.naturalWidth > 0; })()",
                            within=20,
                        )
                    await page.evaluate("window.scrollTo(0, 0)")
                    shown = await page.evaluate(
                        """[...document.querySelectorAll('.photos figure')].map(f => {
                             const img = f.querySelector('img'), a = img && img.closest('a');
                             return img && {src: new URL(img.src).pathname, href: a && new URL(a.href).pathname,
                               target: a && a.target, natural: [img.naturalWidth, img.naturalHeight],
                               shown: img.getBoundingClientRect().width, alt: img.alt};
                           })"""
                    )
                    assert [Path(s["src"]).stem for s in shown] == sent, name
                    for s, photo in zip(shown, public.photos, strict=True):
                        assert s["href"] == s["src"] and s["target"] == "_blank"  # each opens full size
                        assert s["natural"] == [1240, 1754]
                        assert s["alt"]
                        # Large enough to read: nearly the phone's width, a third of a desktop's column.
                        assert s["shown"] >= (width - 40 if mobile else 270), (name, s)
                        assert await fetch(session, site_url + s["href"]) == photo
                fit = await page.evaluate(OVERFLOW)
                assert fit["scroll"] <= fit["client"] and fit["cut"] == [], (name, view_name, fit)
                await page.screenshot(artifacts / "public" / f"{name}-{view_name}.png")
            await show(page, f"{site_url}/data.html", None)
            fit = await page.evaluate(OVERFLOW)
            assert fit["scroll"] <= fit["client"] and fit["cut"] == [], (name, "data.html", fit)
            await page.screenshot(artifacts / "public" / f"{name}-data.png")
            assert page.console == [], name


def parse_csv_link(href: str) -> list[list[str]]:
    prefix = "data:text/csv;charset=utf-8,"
    assert href.startswith(prefix)
    text = urllib.parse.unquote(href[len(prefix) :])
    assert text.startswith("\ufeff")  # so a spreadsheet reads the names as UTF-8
    return list(csv.reader(io.StringIO(text[1:])))


async def test_every_area_links_its_json_csv_and_nist_and_explains_them(
    public: Public, site_url: str, browser: Browser
) -> None:
    sample = public.sample
    site = sample.site_dir
    c = sample.contest
    candidates = json.loads((site / f"pemilu/{c}.json").read_text())
    ids = sorted(candidates, key=lambda k: candidates[k]["nomor_urut"])
    page = await browser.new_page()
    async with aiohttp.ClientSession() as session:
        for view in views(public).values():
            codes = view.split("/")[1:]
            await show(page, f"{site_url}/#{view}", view)
            links = await page.evaluate(
                "Object.fromEntries([...document.querySelectorAll('#downloads a[data-kind]')]"
                ".map(a => [a.dataset.kind, a.getAttribute('href')]))"
            )
            assert set(links) == {"json", "csv", "nist", "about"}, view
            totals_rel = f"pemilu/hhcw/{'/'.join([c, *codes])}.json"
            assert links["json"] == totals_rel
            assert await fetch(session, f"{site_url}/{links['json']}") == (site / totals_rel).read_bytes()
            nist = json.loads(await fetch(session, f"{site_url}/{links['nist']}"))
            assert nist["@type"] == "ElectionResults.ElectionReport"
            assert links["nist"] == f"suara/nist/{c}.json"

            rows = parse_csv_link(links["csv"])
            totals = json.loads((site / totals_rel).read_text())
            assert rows[0][:2] == ["kode", "nama"]
            assert rows[0][2 : 2 + len(ids)] == [
                f"{candidates[i]['nomor_urut']:02d} {candidates[i]['nama']} ({i})" for i in ids
            ]
            if len(codes) == 5:  # the TPS: its form
                assert rows[1][0] == codes[-1]
                assert [int(v) for v in rows[1][2 : 2 + len(ids)]] == [totals["chart"][i] for i in ids]
                assert (
                    dict(zip(rows[0][2 + len(ids) :], map(int, rows[1][2 + len(ids) :]), strict=True))
                    == (totals["administrasi"])
                )
                continue
            region = json.loads(
                (site / f"wilayah/pemilu/{'/'.join([c, *codes]) if codes else c + '/0'}.json").read_text()
            )
            assert [r[0] for r in rows[1:]] == [k["kode"] for k in region]
            assert [r[1] for r in rows[1:]] == [k["nama"] for k in region]
            for r in rows[1:]:
                entry = totals["table"][r[0]]
                counted = entry["status_progress"]
                assert r[2 : 2 + len(ids)] == [str(entry[i]) if counted else "" for i in ids], r
                assert r[-1] == ("1" if counted else "0")
            if not codes:  # the national CSV adds up to the forms the test sent
                sums = {i: sum(int(r[2 + n] or 0) for r in rows[1:]) for n, i in enumerate(ids)}
                expected = dict.fromkeys(ids, 0)
                for (_, contest), accepted in public.current.items():
                    if contest == c and not accepted.quarantined:
                        for i in ids:
                            expected[i] += accepted.form.votes[i]
                assert sums == expected

        about = (await fetch(session, f"{site_url}/data.html")).decode()
    assert page.console == []
    for needed in ("CC BY 4.0", 'id="integritas"', "suara audit site https://", "suara/riwayat/", "foto/"):
        assert needed in about, needed
    # The licence, with the wording of its attribution, is the one docs/layout.md documents.
    layout = (REPO / "docs/layout.md").read_text()
    licence = "https://creativecommons.org/licenses/by/4.0/"
    assert f'href="{licence}deed.id" rel="license"' in about and f'href="{licence}" rel="license"' in about
    attribution = re.search(r'<blockquote id="atribusi"><p>(.*?)</p></blockquote>', about)
    assert attribution is not None and licence in attribution[1]
    assert attribution[1] in " ".join(line.removeprefix("> ") for line in layout.splitlines() if line.startswith("> "))
    # The command the page gives is the one the CLI reference documents.
    assert "usage: suara audit site [-h] [--key-id ID] [--json] SITE" in (REPO / "docs/cli.md").read_text()


async def test_the_footer_says_what_the_chain_head_is_and_how_to_check_it(
    public: Public, site_url: str, browser: Browser
) -> None:
    snapshot = json.loads((public.sample.site_dir / "suara/snapshot.json").read_text())
    head = snapshot["chain_head"]
    page = await browser.new_page()
    await show(page, site_url + "/", public.sample.contest)
    footer = await page.evaluate(
        "({text: document.querySelector('footer').textContent,"
        " hash: document.querySelector('#chain code').dataset.hash,"
        " how: document.querySelector('footer a[href=\"data.html#integritas\"]') !== null})"
    )
    assert f"kepala rantai: catatan ke-{head['position']}" in footer["text"]
    assert footer["hash"] == head["hash"]
    assert footer["how"]
    assert "suara audit site" in footer["text"]
    assert re.search(r"sidik jari \(hash\)", footer["text"])


async def test_first_load_is_small_at_every_width(
    public: Public, site_url: str, browser: Browser, artifacts: Path, record_property: Any
) -> None:
    figures = {}
    for name, width, height, mobile in WIDTHS:
        page = await sized_page(browser, width, height, mobile, network=True)
        await show(page, site_url + "/", public.sample.contest)
        await page.wait_for("document.readyState === 'complete'")
        by_url = {url.removeprefix(site_url): n for url, n in page.transfer.by_url().items()}
        assert {"/", "/app.css", "/app.js", "/suara/snapshot.json"} <= set(by_url)
        figures[name] = sum(by_url.values())
        assert figures[name] < FIRST_LOAD_BUDGET, by_url
    (artifacts / "public").mkdir(exist_ok=True)
    (artifacts / "public" / "first-load.json").write_text(json.dumps(figures, indent=1))
    record_property("figures", {"first_load_bytes": figures})
    for name in ("app.js", "app.css", "index.html"):
        assert len(gzip.compress((public.sample.site_dir / name).read_bytes(), 9)) < 10_000, name


async def press(page: Page, key: str, code: int, text: str = "") -> None:
    """A real key press: down (with its text, which is what activates a control) and up."""
    for kind in ("keyDown", "keyUp"):
        event = {"type": kind, "key": key, "code": key, "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code}
        if text and kind == "keyDown":
            event["text"] = text
        await page.send("Input.dispatchKeyEvent", event)


def shares(votes: dict[str, int], ids: list[str]) -> list[str]:
    total = sum(votes[i] for i in ids)
    return [f"{votes[i] * 100 / total:.2f}" for i in ids]


async def test_the_night_in_a_chart_opened_from_the_keyboard(
    public: Public, site_url: str, browser: Browser, artifacts: Path
) -> None:
    site = public.sample.site_dir
    c = public.sample.contest
    candidates = json.loads((site / f"pemilu/{c}.json").read_text())
    ids = sorted(candidates, key=lambda k: candidates[k]["nomor_urut"])
    snapshots = [e["snapshot"] for e in json.loads((site / f"suara/riwayat/{c}.json").read_text())]
    assert len(snapshots) == 2  # the real site's cycle, then the one after the photo TPS
    # The oracle: national votes summed from the forms, before and after the photo TPS's form.
    now = dict.fromkeys(ids, 0)
    for (_, contest), accepted in public.current.items():
        if contest == c and not accepted.quarantined:
            for i in ids:
                now[i] += accepted.form.votes[i]
    photo_form = public.current[(public.photo_tps[-1], c)].form
    before = {i: now[i] - photo_form.votes[i] for i in ids}

    page = await browser.new_page()
    await show(page, site_url + "/", c)
    assert await page.evaluate("document.getElementById('history').hidden") is False
    # Reachable with Tab alone, opened with Enter: no mouse.
    for _ in range(40):
        await press(page, "Tab", 9)
        if await page.evaluate("document.activeElement.matches('#history summary')"):
            break
    else:
        raise AssertionError("Tab never reaches the history chart")
    await press(page, "Enter", 13, "\r")
    await page.wait_for(f"document.querySelectorAll('#history-chart polyline').length === {len(ids)}")
    chart = await page.evaluate(
        """({snapshots: document.querySelector('#history-chart svg').dataset.snapshots,
             label: document.querySelector('#history-chart svg').getAttribute('aria-label'),
             lines: Object.fromEntries([...document.querySelectorAll('#history-chart polyline')]
               .map(p => [p.dataset.choice, p.dataset.shares.split(',')]))})"""
    )
    assert chart["snapshots"] == ",".join(map(str, snapshots))
    assert {i: line for i, line in chart["lines"].items()} == {
        i: [a, b] for i, a, b in zip(ids, shares(before, ids), shares(now, ids), strict=True)
    }
    assert "Perolehan suara nasional" in chart["label"]  # what a screen reader says instead of the lines
    await page.screenshot(artifacts / "public" / "history.png")
    # Elsewhere than the national view there is no national chart.
    view = "/".join((c, public.photo_tps[0]))
    await show(page, f"{site_url}/#{view}", view)
    assert await page.evaluate("document.getElementById('history').hidden") is True
    assert page.console == []


# The contest picker's visible label (the words of the language shown).
LABEL = (
    "[...document.getElementById('contest').labels[0].querySelectorAll('span')]"
    ".filter(s => s.offsetParent)[0].textContent"
)
CONTRAST = """(() => {
  const rgb = (s) => (s.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (e) => {
    for (; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const poor = [];
  for (const e of document.querySelectorAll('body *')) {
    const own = [...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || !e.getClientRects().length) continue;
    const a = lum(rgb(getComputedStyle(e).color)), b = lum(background(e));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const what = e.tagName + '.' + e.className + ' ' + e.textContent.trim().slice(0, 30);
    if (ratio < 4.5) poor.push(what + ' ' + ratio.toFixed(2));
  }
  return poor;
})()"""


async def test_english_labels_keyboard_and_contrast(
    public: Public, site_url: str, browser: Browser, artifacts: Path
) -> None:
    """English is a second language of the labels (names and numbers stay as published); every text on the
    page has WCAG AA contrast (4.5:1); the contest picker has a visible label."""
    c = public.sample.contest
    candidates = json.loads((public.sample.site_dir / f"pemilu/{c}.json").read_text())
    page = await sized_page(browser, 360, 740, True)
    await show(page, site_url + "/", c)
    indonesian = await page.evaluate(
        "[...document.querySelectorAll('#chart [data-choice]')].map(e => [e.dataset.votes, e.textContent])"
    )
    assert await page.evaluate(LABEL) == "Pemilihan"
    assert await page.evaluate(CONTRAST) == []
    await page.click("#lang")
    await page.wait_for("document.getElementById('area-name').textContent.startsWith('National — ')")
    english = await page.evaluate(
        f"""({{lang: document.documentElement.lang,
             heads: [...document.querySelectorAll('#detail th')].slice(-2).map(e => e.textContent),
             downloads: document.querySelector('#downloads h2').textContent,
             label: {LABEL},
             footer: [...document.querySelectorAll('footer p')].filter(p => p.offsetParent).map(p => p.lang),
             chart: [...document.querySelectorAll('#chart [data-choice]')]
               .map(e => [e.dataset.votes, e.textContent])}})"""
    )
    assert english["lang"] == "en"
    assert english["heads"] == ["Progress", "Notes"]
    assert english["downloads"] == "Download the data"
    assert english["label"] == "Election"
    assert english["footer"] == ["", "en", "en"]  # the chain line, then the English paragraphs only
    assert english["chart"] == indonesian  # names and numbers as published, in either language
    for _, text in english["chart"]:
        assert any(v["nama"] in text for v in candidates.values())
    fit = await page.evaluate(OVERFLOW)
    assert fit["scroll"] <= fit["client"] and fit["cut"] == [], fit
    assert await page.evaluate(CONTRAST) == []
    await page.screenshot(artifacts / "public" / "phone360-english.png")

    view = "/".join((c, *public.photo_tps))
    await page.navigate("about:blank")
    await page.navigate(f"{site_url}/#{view}")  # a new load: the choice is remembered
    await page.wait_for(f"document.body.dataset.state === 'ready' && document.body.dataset.view === {json.dumps(view)}")
    assert await page.evaluate("document.documentElement.lang") == "en"
    captions = await page.evaluate("[...document.querySelectorAll('.photos figcaption')].map(e => e.textContent)")
    assert captions == [f"Page {i} · full size" for i in (1, 2, 3)]
    fit = await page.evaluate(OVERFLOW)
    assert fit["scroll"] <= fit["client"] and fit["cut"] == [], fit
    assert await page.evaluate(CONTRAST) == []
    # Back to Indonesian from the keyboard: the button is a real button.
    await page.evaluate("document.getElementById('lang').focus()")
    await press(page, "Enter", 13, "\r")
    await page.wait_for("document.documentElement.lang === 'id'")
    await page.wait_for("document.querySelector('#detail h2').textContent === 'Formulir C.Hasil'")
    assert page.console == []


async def test_anomalies_of_every_area_down_to_the_quarantined_tps(
    public: Public, pipeline: Pipeline, site_url: str, browser: Browser, artifacts: Path
) -> None:
    sample = public.sample
    site = sample.site_dir
    c = sample.contest
    quarantined = sorted(tps for (tps, contest), a in public.current.items() if contest == c and a.quarantined)
    assert quarantined == [sample.quarantined_tps]  # the oracle: the forms tally quarantined
    q = quarantined[0]
    page = await sized_page(browser, 360, 740, True)
    await show(page, site_url + "/", c)
    # Linked from the totals; followed with real clicks, down to the desa.
    await page.click("#flags a[data-anomalies]")
    path = (q[:2], q[:4], q[:6], q[:10])
    for depth in range(len(path) + 1):
        view = "/".join(("anomali", c, *path[:depth]))
        await ready(page, view)
        shown = await page.evaluate(
            """({q: Number(progress.dataset.quarantined), recaps: Number(progress.dataset.recapMismatches),
                 rows: Object.fromEntries([...document.querySelectorAll('#detail tr[data-child]')].map(tr =>
                   [tr.dataset.child, [Number(tr.querySelector('[data-quarantined]').dataset.quarantined),
                     (tr.querySelector('[data-recon]') || {dataset: {}}).dataset.recon || null,
                     tr.querySelector('.note').textContent,
                     Number(tr.querySelector('[data-recap-mismatches]').dataset.recapMismatches)]]))})"""
        )
        assert shown["q"] == len([t for t in quarantined if t.startswith("".join(path[depth - 1 : depth]))])
        # Recaps that do not match, at every level: one recap in all (the PPK's, one vote off), counted in
        # each area above its kecamatan and in the child on the way down to it.
        here = "".join(path[depth - 1 : depth])
        assert shown["recaps"] == int(sample.mismatch_kecamatan.startswith(here)), view
        for code, row in shown["rows"].items():
            assert row[3] == int(sample.mismatch_kecamatan.startswith(code)), (view, code)
        status_rel = f"suara/status/{'/'.join((c, *path[:depth]))}.json"
        status = json.loads((site / status_rel).read_text())
        assert sorted(shown["rows"]) == sorted(status["children"]), view  # every flagged child, nothing else
        assert sum(row[0] for row in shown["rows"].values()) == shown["q"]
        for code, (n, recon, note, _) in shown["rows"].items():
            entry = status["children"][code]
            assert n == entry.get("tps_quarantined", 0)
            assert recon == entry.get("reconciliation")
            for check in entry.get("failed_checks", []):
                assert check in note
        if depth == 2:  # the kabupaten/kota of the kecamatan whose recap is one vote off
            assert shown["rows"][sample.mismatch_kecamatan][1] == "MISMATCH"
        fit = await page.evaluate(OVERFLOW)
        assert fit["scroll"] <= fit["client"] and fit["cut"] == [], (view, fit)
        await page.screenshot(artifacts / "public" / f"anomalies-{depth}.png")
        if depth < len(path):
            await page.click(f'#detail tr[data-child="{path[depth]}"] a')
    # At the desa, the quarantined TPS links to its form.
    assert shown["rows"][q][2]  # its failed checks
    await page.click(f'#detail tr[data-child="{q}"] a')
    await ready(page, "/".join((c, *path, q)))
    assert "dikarantina" in await page.evaluate("document.getElementById('flags').textContent")

    # The kecamatan's own recap: its differences, as its status file lists them.
    kec = sample.mismatch_kecamatan
    view = "/".join(("anomali", c, kec[:2], kec[:4], kec))
    await show(page, f"{site_url}/#{view}", view)
    status = json.loads((site / f"suara/status/{c}/{kec[:2]}/{kec[:4]}/{kec}.json").read_text())
    assert await page.evaluate("document.querySelector('#flags [data-recon]').dataset.recon") == "MISMATCH"
    assert await page.evaluate("document.querySelectorAll('#flags .diff li').length") == len(
        status["reconciliation"]["differences"]
    )
    # And the TPS its digital count sums, each with its numbers of every field that differs, their sum and the
    # recap: the file, then the page. The oracle is the forms tally acknowledged and the recap real.py signed
    # (the first choice one vote more than the forms, every other field of the recap left at 0).
    stations = sorted(t for t in pipeline.all_tps if t.startswith(kec))
    forms = {t: public.current[(t, c)].form for t in stations}
    first = sample.choices[0]
    recap = json.loads((site / f"suara/rekap/{c}/{kec[:2]}/{kec[:4]}/{kec}.json").read_text())
    fields = [d["field"] for d in recap["differences"]]
    assert f"votes[{first}]" in fields and "suara_sah" in fields and recap["status"] == "MISMATCH"
    assert recap["unit"] == "tps" and [u["kode"] for u in recap["units"]] == stations
    oracle = {f"votes[{ch}]": lambda f, ch=ch: f.votes[ch] for ch in sample.choices} | {
        name: lambda f, name=name: getattr(f, name) for name in ("suara_sah", "suara_tidak_sah", "suara_total")
    }
    for unit in recap["units"]:
        assert unit["status"] == "dihitung", unit  # every TPS counted: the recap is MISMATCH, not INCOMPLETE
        for field in fields:
            if field in oracle:
                assert unit["digital"][field] == oracle[field](forms[unit["kode"]]), (unit["kode"], field)
    for field in fields:
        total = sum(u["digital"][field] for u in recap["units"])
        difference = next(d for d in recap["differences"] if d["field"] == field)
        assert total == recap["digital"][field] == difference["digital"], field
        assert recap["recap"][field] == difference["recap"], field
        if field in oracle:
            assert total == sum(oracle[field](form) for form in forms.values()), field
    assert recap["recap"][f"votes[{first}]"] == sum(f.votes[first] for f in forms.values()) + 1
    assert recap["recap"]["suara_sah"] == 0
    table = await page.evaluate(
        """({rows: [...document.querySelectorAll('table.recap-units tbody tr')].map(tr => [tr.dataset.unit,
               Object.fromEntries([...tr.querySelectorAll('td[data-field]')].map(td =>
                 [td.dataset.field, td.textContent]))]),
             sums: Object.fromEntries([...document.querySelectorAll('table.recap-units tfoot tr')].map(tr =>
               [tr.dataset.sum, Object.fromEntries([...tr.querySelectorAll('td[data-field]')].map(td =>
                 [td.dataset.field, td.textContent]))])),
             summary: document.querySelector('[data-recap-summary]').textContent,
             link: document.querySelector('#detail a[data-kind=recap]').getAttribute('href')})"""
    )

    def number(text: str) -> int:
        return int(text.replace(".", ""))  # id-ID thousands separators

    assert [code for code, _ in table["rows"]] == stations
    for code, cells in table["rows"]:
        assert list(cells) == fields
        for field in fields:
            if field in oracle:
                assert number(cells[field]) == oracle[field](forms[code]), (code, field)
    assert {k: {f: number(v) for f, v in row.items()} for k, row in table["sums"].items()} == {
        "digital": recap["digital"],
        "recap": recap["recap"],
    }
    assert f"{len(stations)} TPS" in table["summary"]
    assert table["link"] == f"suara/rekap/{c}/{kec[:2]}/{kec[:4]}/{kec}.json"
    fit = await page.evaluate(OVERFLOW)
    assert fit["scroll"] <= fit["client"] and fit["cut"] == [], ("recap units", fit)
    await page.screenshot(artifacts / "public" / "anomalies-recap-units-phone.png")
    # A unit links to its form: the first TPS's page.
    await page.click(f'table.recap-units tr[data-unit="{stations[0]}"] a')
    await ready(page, "/".join((c, kec[:2], kec[:4], kec, stations[0][:10], stations[0])))
    desktop = await sized_page(browser, 1280, 900, False)
    await show(desktop, f"{site_url}/#{view}", view)
    assert await desktop.evaluate("document.querySelectorAll('table.recap-units tbody tr').length") == len(stations)
    await desktop.screenshot(artifacts / "public" / "anomalies-recap-units-desktop.png")
    assert page.console == [] and desktop.console == []
