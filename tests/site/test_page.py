"""The public page in a real browser (Debian's chromium over DevTools), against the JSON it reads.

Every number on the page is compared with the published file it came from and with the expectations
summed from the forms tally acknowledged (tests/site/real.py), not from those files.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from tests.site.cdp import Browser, Page
from tests.site.real import build_real_site
from tests.site.sample import SampleSite
from tests.support.publish import Pipeline

FIRST_LOAD_BUDGET = 60_000


@pytest.fixture
async def sample(pipeline: Pipeline) -> SampleSite:
    """These tests read the site the real pipeline wrote (tests/site/real.py)."""
    return await build_real_site(pipeline)  # bytes on the wire, a slow phone's first visit


def id_number(n: int) -> str:
    """How id-ID writes an integer: '.' between thousands."""
    return f"{n:,}".replace(",", ".")


def id_percent(x: float) -> str:
    return f"{x:,.2f}".replace(",", "_").replace(".", ",").replace("_", ".") + "%"


def read(sample: SampleSite, rel: str) -> Any:
    return json.loads((sample.site_dir / rel).read_text())


def write(sample: SampleSite, rel: str, value: object) -> None:
    body = json.dumps(value).encode()
    (sample.site_dir / rel).write_bytes(body)
    (sample.site_dir / (rel + ".gz")).write_bytes(gzip.compress(body, mtime=0))


def totals_path(contest: str, codes: tuple[str, ...]) -> str:
    return f"pemilu/hhcw/{contest}/{'/'.join(codes)}.json" if codes else f"pemilu/hhcw/{contest}.json"


async def ready(page: Page, view: str) -> None:
    await page.wait_for(f"document.body.dataset.state === 'ready' && document.body.dataset.view === {json.dumps(view)}")


async def open_page(browser: Browser, url: str, view: str, *, network: bool = False) -> Page:
    page = await browser.new_page(network=network)
    await page.navigate(url)
    await ready(page, view)
    return page


async def chart(page: Page) -> dict[str, tuple[int, str]]:
    rows = await page.evaluate(
        "[...document.querySelectorAll('#chart [data-choice]')]"
        ".map(e => [e.dataset.choice, Number(e.dataset.votes), e.querySelector('b').textContent])"
    )
    return {choice: (votes, text) for choice, votes, text in rows}


async def child_rows(page: Page) -> dict[str, dict[str, int]]:
    rows = await page.evaluate(
        """Object.fromEntries([...document.querySelectorAll('tr[data-child]')].map(tr => [tr.dataset.child,
             Object.fromEntries([...tr.querySelectorAll('[data-choice]')].map(td => [td.dataset.choice,
               Number(td.dataset.votes)]))]))"""
    )
    assert isinstance(rows, dict)
    return rows


def chart_votes_of(totals: dict[str, Any], choices: tuple[str, ...]) -> dict[str, int]:
    return {ch: totals["chart"][ch] for ch in choices}


def table_votes_of(totals: dict[str, Any], choices: tuple[str, ...]) -> dict[str, dict[str, int]]:
    return {
        code: {ch: row[ch] for ch in choices} if row["status_progress"] else {} for code, row in totals["table"].items()
    }


async def test_national_numbers_equal_the_json(
    sample: SampleSite, site_url: str, browser: Browser, artifacts: Path
) -> None:
    c = sample.contest
    national = read(sample, f"pemilu/hhcw/{c}.json")
    snapshot = read(sample, "suara/snapshot.json")
    assert chart_votes_of(national, sample.choices) == sample.expected_votes  # the files agree with the oracle

    page = await open_page(browser, site_url + "/", c)
    shown = await chart(page)
    assert {ch: votes for ch, (votes, _) in shown.items()} == sample.expected_votes
    assert {ch: text for ch, (_, text) in shown.items()} == {
        ch: id_number(v) for ch, v in sample.expected_votes.items()
    }
    progress = await page.evaluate(
        "({p: Number(progress.dataset.progres), t: Number(progress.dataset.total), text: progress.textContent})"
    )
    assert (progress["p"], progress["t"]) == (national["progres"]["progres"], national["progres"]["total"])
    assert (progress["p"], progress["t"]) == (sample.expected_progres, sample.expected_total)
    assert id_percent(sample.expected_progres * 100 / sample.expected_total) in progress["text"]
    assert id_percent(national["chart"]["persen"]) in progress["text"]

    assert await page.evaluate("document.getElementById('last-updated').textContent") == (
        f"Terakhir diperbarui: {snapshot['ts']} WIB"
    )
    provinces = [p["kode"] for p in read(sample, f"wilayah/pemilu/{c}/0.json")]
    rows = await child_rows(page)
    assert list(rows) == provinces
    assert rows == table_votes_of(national, sample.choices)
    names = await page.evaluate("[...document.querySelectorAll('tr[data-child] a')].map(a => a.textContent)")
    assert names == [p["nama"] for p in read(sample, f"wilayah/pemilu/{c}/0.json")]
    options = await page.evaluate("[...document.querySelectorAll('#contest option')].map(o => o.value)")
    assert options == list(snapshot["contests"])
    assert page.console == []
    await page.screenshot(artifacts / "site-national.png")


async def test_click_down_to_a_tps(sample: SampleSite, site_url: str, browser: Browser, artifacts: Path) -> None:
    c = sample.contest
    page = await open_page(browser, site_url + "/", c)
    for depth, code in enumerate(sample.tps_path, start=1):
        codes = sample.tps_path[:depth]
        # Rows are clickable anywhere (a real mouse click), not only on the link.
        await page.click(f'tr[data-child="{code}"] td:last-child')
        await ready(page, "/".join((c, *codes)))
        assert await page.evaluate("location.hash") == "#" + "/".join((c, *codes))
        crumbs = await page.evaluate("[...document.querySelectorAll('#crumbs > *')].map(e => e.textContent)")
        assert len(crumbs) == depth + 1
        parent_list = f"wilayah/pemilu/{c}/{'/'.join(codes[:-1]) or '0'}.json"
        assert crumbs[-1] == next(a["nama"] for a in read(sample, parent_list) if a["kode"] == code)
        totals = read(sample, totals_path(c, codes))
        shown = {ch: votes for ch, (votes, _) in (await chart(page)).items()}
        if depth < 5:
            assert shown == chart_votes_of(totals, sample.choices), codes
            assert await child_rows(page) == table_votes_of(totals, sample.choices), codes

    tps = read(sample, totals_path(c, sample.tps_path))
    assert shown == {ch: tps["chart"][ch] for ch in sample.choices} == sample.tps_votes
    fields = await page.evaluate(
        "Object.fromEntries([...document.querySelectorAll('[data-tps-field]')]"
        ".map(e => [e.dataset.tpsField, e.textContent]))"
    )
    assert len(fields) == 18
    assert fields == {k: id_number(v) for k, v in tps["administrasi"].items()}
    assert tps["administrasi"] == sample.tps_administrasi
    # The photo is the file the TPS names, decoded by the browser; the other pages have none yet.
    src = [i for i in tps["images"] if i]
    assert len(src) == 1
    assert (
        await page.wait_for(
            "(() => { const i = document.querySelector('.photos img');"
            " return i && i.complete && i.naturalWidth > 0 && new URL(i.src).pathname; })()"
        )
        == src[0]
    )
    assert await page.evaluate("document.querySelector('.photos img').loading") == "lazy"
    assert await page.evaluate("document.querySelectorAll('.nofoto').length") == 2
    assert "belum ada foto" in await page.evaluate("document.querySelector('.nofoto').textContent")
    await page.screenshot(artifacts / "site-tps.png")

    await page.evaluate("history.back()")  # Back returns to the desa
    await ready(page, "/".join((c, *sample.tps_path[:4])))
    assert page.console == []


async def test_quarantine_and_reconciliation_are_shown(
    sample: SampleSite, site_url: str, browser: Browser, artifacts: Path
) -> None:
    c = sample.contest
    kec = sample.mismatch_kecamatan
    kab, prov = kec[:4], kec[:2]
    q = sample.quarantined_tps
    page = await open_page(browser, f"{site_url}/#{c}/{prov}/{kab}", f"{c}/{prov}/{kab}")
    flag = await page.evaluate(
        f"""(() => {{ const e = document.querySelector('tr[data-child="{kec}"] [data-recon]');
              return e && [e.dataset.recon, e.textContent]; }})()"""
    )
    assert flag == ["MISMATCH", "Rekap: TIDAK COCOK"]
    own = read(sample, f"suara/status/{c}/{prov}/{kab}.json")["reconciliation"]["status"]
    shown_own = await page.evaluate("document.querySelector('#flags [data-recon]').dataset.recon")
    assert shown_own == own

    await page.evaluate(f"location.hash = '#{c}/{prov}/{kab}/{kec}'")
    await ready(page, f"{c}/{prov}/{kab}/{kec}")
    status = read(sample, f"suara/status/{c}/{prov}/{kab}/{kec}.json")
    assert status["reconciliation"]["status"] == "MISMATCH"
    assert await page.evaluate("document.querySelector('#flags [data-recon]').textContent") == "Rekap: TIDAK COCOK"
    differences = await page.evaluate("[...document.querySelectorAll('#flags .diff li')].map(e => e.textContent)")
    assert len(differences) == len(status["reconciliation"]["differences"])
    for line, diff in zip(differences, status["reconciliation"]["differences"], strict=True):
        assert f"rekap {id_number(diff['recap'])}, digital {id_number(diff['digital'])}" in line
    await page.screenshot(artifacts / "site-mismatch.png")

    desa = q[:10]
    await page.evaluate(f"location.hash = '#{c}/{prov}/{kab}/{q[:6]}/{desa}'")
    await ready(page, f"{c}/{prov}/{kab}/{q[:6]}/{desa}")
    assert await page.evaluate(f"document.querySelector('tr[data-child=\"{q}\"] .q').textContent") == "dikarantina"
    assert await page.evaluate("document.querySelectorAll('tr[data-child] .q').length") == 1

    view = f"{c}/{prov}/{kab}/{q[:6]}/{desa}/{q}"
    await page.evaluate(f"location.hash = '#{view}'")
    await ready(page, view)
    tps = read(sample, totals_path(c, (prov, kab, q[:6], desa, q)))
    assert await page.evaluate("document.querySelector('#flags .q').textContent") == "dikarantina"
    # Shown as the officer signed it, though it counts nowhere.
    assert {ch: v for ch, (v, _) in (await chart(page)).items()} == {ch: tps["chart"][ch] for ch in sample.choices}
    assert "tidak dihitung" in await page.evaluate("progress.textContent")

    n = sample.no_data_tps
    view = f"{c}/{n[:2]}/{n[:4]}/{n[:6]}/{n[:10]}/{n}"
    await page.evaluate(f"location.hash = '#{view}'")
    await ready(page, view)
    assert await page.evaluate("progress.textContent") == "Belum ada data"
    assert await page.evaluate("document.querySelectorAll('.nofoto').length") == 3
    assert await page.evaluate("document.querySelectorAll('[data-tps-field]').length") == 0
    assert page.console == []


async def test_missing_status_files_are_tolerated(sample: SampleSite, site_url: str, browser: Browser) -> None:
    c = sample.contest
    for rel in (f"suara/status/{c}.json", f"suara/status/{c}/32.json"):
        (sample.site_dir / rel).unlink()
        (sample.site_dir / (rel + ".gz")).unlink()
    page = await open_page(browser, f"{site_url}/#{c}/32", f"{c}/32")
    assert await page.evaluate("document.querySelectorAll('#flags .tag').length") == 0
    assert await child_rows(page) == table_votes_of(read(sample, f"pemilu/hhcw/{c}/32.json"), sample.choices)


async def test_first_load_fits_a_slow_phone(
    sample: SampleSite, site_url: str, browser: Browser, artifacts: Path
) -> None:
    page = await open_page(browser, site_url + "/", sample.contest, network=True)
    await page.wait_for("document.readyState === 'complete'")
    by_url = {url.removeprefix(site_url): n for url, n in page.transfer.by_url().items()}
    c = sample.contest
    wanted = {"/", "/app.css", "/app.js", "/suara/snapshot.json", f"/pemilu/{c}.json", f"/pemilu/hhcw/{c}.json"}
    assert wanted | {f"/wilayah/pemilu/{c}/0.json"} <= set(by_url)
    total = sum(by_url.values())
    (artifacts / "site-first-load.json").write_text(json.dumps({"total": total, "by_url": by_url}, indent=1))
    assert total < FIRST_LOAD_BUDGET, by_url
    for name in ("app.js", "app.css"):  # as sent: gzipped (the .gz beside each)
        assert len(gzip.compress((sample.site_dir / name).read_bytes(), 9)) < 10_000, name


async def test_a_new_snapshot_is_shown(sample: SampleSite, site_url: str, browser: Browser) -> None:
    c = sample.contest
    page = await open_page(browser, site_url + "/", c)
    national = read(sample, f"pemilu/hhcw/{c}.json")
    snapshot = read(sample, "suara/snapshot.json")
    first = sample.choices[0]
    national["chart"][first] += 1000
    write(sample, f"pemilu/hhcw/{c}.json", national)
    write(sample, "suara/snapshot.json", snapshot | {"snapshot": snapshot["snapshot"] + 1, "ts": "2024-02-16 16:30:00"})
    # What the 30 s timer calls, called now.
    await page.evaluate("window.suaraPoll()")
    await page.wait_for(
        f"document.querySelector('#chart [data-choice=\"{first}\"]').dataset.votes === '{national['chart'][first]}'"
    )
    assert await page.evaluate("document.body.dataset.snapshot") == str(snapshot["snapshot"] + 1)
    assert "16:30:00" in await page.evaluate("document.getElementById('last-updated').textContent")


HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>"\'&'


async def test_every_value_is_shown_as_text_never_as_markup(
    sample: SampleSite, site_url: str, browser: Browser
) -> None:
    """Whatever a writer slips into a published file (a check name, a name, a choice) is text on the page."""
    c = sample.contest
    q = sample.quarantined_tps
    codes = (q[:2], q[:4], q[:6], q[:10])
    status_rel = f"suara/status/{c}/{'/'.join(codes)}.json"
    status = read(sample, status_rel)
    status["children"][q]["failed_checks"] = [HOSTILE, "x" * 3]
    status["children"][q]["tps_quarantined"] = HOSTILE  # a count where markup was put instead
    write(sample, status_rel, status)
    candidates = read(sample, f"pemilu/{c}.json")
    first = next(iter(candidates))
    candidates[first]["nama"] = HOSTILE
    candidates[first]["warna"] = 'red;background:url("javascript:1")'
    write(sample, f"pemilu/{c}.json", candidates)
    regions_rel = f"wilayah/pemilu/{c}/{'/'.join(codes)}.json"
    regions = read(sample, regions_rel)
    regions[0]["nama"] = HOSTILE
    write(sample, regions_rel, regions)
    tps_rel = totals_path(c, (*codes, q))
    tps = read(sample, tps_rel)
    tps["administrasi"] = dict(tps["administrasi"] or {}, **{HOSTILE: 1})
    tps["ts"] = HOSTILE
    write(sample, tps_rel, tps)

    page = await open_page(browser, f"{site_url}/#{c}/{'/'.join(codes)}", f"{c}/{'/'.join(codes)}")
    assert await page.evaluate(f"document.querySelector('tr[data-child=\"{regions[0]['kode']}\"] a').textContent") == (
        HOSTILE
    )
    assert HOSTILE in await page.evaluate(f"document.querySelector('tr[data-child=\"{q}\"] .muted').textContent")
    assert await page.evaluate(f"document.querySelector('#chart [data-choice=\"{first}\"] span').textContent") == (
        f"{candidates[first]['nomor_urut']:02d} · {HOSTILE}"
    )
    view = f"{c}/{'/'.join(codes)}/{q}"
    await page.evaluate(f"location.hash = '#{view}'")
    await ready(page, view)
    assert HOSTILE in await page.evaluate("document.getElementById('flags').textContent")
    assert HOSTILE in await page.evaluate("document.getElementById('detail').textContent")
    injected = await page.evaluate(
        "[window.pwned === undefined, document.querySelectorAll('script').length,"
        " [...document.images].filter(i => !i.closest('figure')).length]"
    )
    assert injected == [True, 1, 0]
    assert page.console == []


async def test_a_photo_publish_held_back_is_shown_as_unavailable(
    sample: SampleSite, site_url: str, browser: Browser
) -> None:
    c = sample.contest
    codes = sample.tps_path
    tps = codes[-1]
    status_rel = f"suara/status/{c}/{'/'.join(codes[:4])}.json"
    status = read(sample, status_rel)
    status["children"].setdefault(tps, {})["photos_unavailable"] = [{"sha256": "ab" * 32, "reason": "does not decode"}]
    write(sample, status_rel, status)
    tps_rel = totals_path(c, codes)
    document = read(sample, tps_rel)
    document["images"] = [None, None, None]
    write(sample, tps_rel, document)

    view = "/".join((c, *codes))
    page = await open_page(browser, f"{site_url}/#{view}", view)
    assert await page.evaluate("document.querySelectorAll('#detail [data-unavailable]').length") == 1
    assert await page.evaluate("document.querySelectorAll('#detail .nofoto').length") == 3
    assert "1 foto tidak tersedia" in await page.evaluate("document.getElementById('flags').textContent")
    assert "dikarantina" not in await page.evaluate("document.getElementById('flags').textContent")
    assert page.console == []
