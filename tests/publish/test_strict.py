"""The strict layout reader (tests/publish/strict.py): it takes the real Sirekap files as they are, it
rejects any one deviation from a valid document, and the site the real pipeline publishes passes it whole.

The reader is written from docs/layout.md and the real files, not from services.publish; the site
check also counts TPS against what tally acknowledged (the pipeline's own record), not against publish.
"""

from __future__ import annotations

import copy
import functools
import gzip
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.publish.strict import (
    ADMINISTRASI_KEYS,
    LayoutError,
    check_candidates,
    check_region_list,
    check_site,
    check_totals,
    check_tps,
    parse,
)
from tests.support.publish import Pipeline

SAMPLES = Path(__file__).resolve().parents[1] / "election" / "sirekap-tps-samples"
SAMPLE_FILES = sorted(SAMPLES.glob("*.json"))
PPWP_2024 = ["100025", "100026", "100027"]  # the 2024 presidential choice ids the real files chart
CONTESTS = ("ppwp", "pdpr", "pkwkp")


def _real(file: Path) -> Any:
    return parse(file.read_bytes(), file.name)


# --- (a) the real files -------------------------------------------------------------------------------------


def test_there_are_53_real_files() -> None:
    assert len(SAMPLE_FILES) == 53


@pytest.mark.parametrize("file", SAMPLE_FILES, ids=[f.stem for f in SAMPLE_FILES])
def test_every_real_sirekap_tps_file_is_accepted_unchanged(file: Path) -> None:
    doc = _real(file)
    tps = check_tps(doc, file.name, PPWP_2024)
    assert tps.has_data == (doc["chart"] is not None or doc["administrasi"] is not None)


def test_real_files_without_mode_are_why_mode_is_optional_for_a_single_file() -> None:
    """docs/layout.md shows `"mode": "hhcw"` in a TPS file; 40 of the 53 real files have no `mode` at all.

    So a reader of real files must not require it; suara's own site, which docs/layout.md pins, must have it.
    """
    without = [f.stem for f in SAMPLE_FILES if "mode" not in _real(f)]
    assert len(without) == 40
    file = SAMPLES / f"{without[0]}.json"
    with pytest.raises(LayoutError, match="missing \\['mode'\\]"):
        check_tps(_real(file), file.name, PPWP_2024, require_mode=True)
    # The real files cover the shapes the reader must take: each section null on its own.
    docs = [_real(f) for f in SAMPLE_FILES]
    assert any(d["chart"] is None and d["administrasi"] is not None for d in docs)
    assert any(d["chart"] is not None and d["administrasi"] is None for d in docs)
    assert any(d["chart"] is None and d["administrasi"] is None for d in docs)
    assert all(set(d["administrasi"]) == ADMINISTRASI_KEYS for d in docs if d["administrasi"] is not None)


# --- (b) one mutation of a valid document is rejected ------------------------------------------------------

CHILDREN = ["3101", "3171"]
TOTALS: dict[str, Any] = {
    "ts": "2024-02-16 16:25:10",
    "psu": None,
    "mode": "hhcw",
    "chart": {"100025": 83, "100026": 107, "100027": 38, "persen": 65.22},
    "table": {
        "3101": {"100025": 83, "100026": 107, "100027": 38, "persen": 65.22, "psu": None, "status_progress": True},
        "3171": {"persen": 0.0, "psu": None, "status_progress": False},
    },
    "progres": {"progres": 15, "total": 23},
}
REGIONS: list[dict[str, Any]] = [
    {"nama": "KAB. ADM. KEP. SERIBU", "id": 3101, "kode": "3101", "tingkat": 2},
    {"nama": "KOTA ADM. JAKARTA PUSAT", "id": 3171, "kode": "3171", "tingkat": 2},
]
TPS_REGIONS: list[dict[str, Any]] = [
    {"nama": "TPS 001", "id": 3101011001001, "kode": "3101011001001", "tingkat": 5},
    {"nama": "TPS 901", "id": 3101011001901, "kode": "3101011001901", "tingkat": 5},
]
CANDIDATES: dict[str, Any] = {
    "100025": {"nama": "H. ANIES - H. A. MUHAIMIN", "nomor_urut": 1, "warna": "#8CB9BD", "ts": "2024-02-14 07:00:00"},
    "100026": {"nama": "H. PRABOWO - GIBRAN", "nomor_urut": 2, "warna": "#ECB159", "ts": "2024-02-14 07:00:00"},
    "100027": {"nama": "H. GANJAR - PROF. MAHFUD", "nomor_urut": 3, "warna": "#B67352", "ts": "2024-02-14 07:00:00"},
}
NO_DATA_TPS: dict[str, Any] = {
    "mode": "hhcw",
    "chart": None,
    "images": [None, None, None],
    "administrasi": None,
    "psu": None,
    "ts": "2024-02-14 07:00:00",
    "status_suara": False,
    "status_adm": False,
}

Checker = Callable[[Any], object]


def _valid_docs() -> list[tuple[str, Any, Checker]]:
    docs: list[tuple[str, Any, Checker]] = [
        ("totals", TOTALS, lambda d: check_totals(d, "totals", PPWP_2024, CHILDREN)),
        ("regions", REGIONS, lambda d: check_region_list(d, "regions", "31")),
        ("tps-regions", TPS_REGIONS, lambda d: check_region_list(d, "tps-regions", "3101011001")),
        ("candidates", CANDIDATES, lambda d: check_candidates(d, "candidates", PPWP_2024)),
        ("no-data-tps", NO_DATA_TPS, lambda d: check_tps(d, "no-data-tps", PPWP_2024, require_mode=True)),
    ]
    for file in SAMPLE_FILES:
        doc = _real(file)
        has_mode = "mode" in doc  # a real file with `mode` must keep it; one without may go without
        docs.append((file.stem, doc, functools.partial(_check_real, name=file.name, require_mode=has_mode)))
    return docs


def _check_real(doc: Any, *, name: str, require_mode: bool) -> object:
    return check_tps(doc, name, PPWP_2024, require_mode=require_mode)


VALID = _valid_docs()
Loc = tuple[str | int, ...]


def _nodes(doc: Any, at: Loc = ()) -> Iterator[tuple[Loc, Any]]:
    yield at, doc
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _nodes(v, (*at, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _nodes(v, (*at, i))


def _get(doc: Any, at: Loc) -> Any:
    for step in at:
        doc = doc[step]
    return doc


BROKEN_TS: list[object] = [
    "2024-02-16T16:25:10",
    "2024-02-16 16:25:10Z",
    "2024-02-16 16:25:10+07:00",
    "2024-02-16 16:25",
    "2024-02-16",
    "2024-13-16 16:25:10",
    "2024-02-30 16:25:10",
    "2024-02-16 24:25:10",
    " 2024-02-16 16:25:10",
    "2024-02-16  16:25:10",
    "2024-02-16 16:25:10.123",
    "16-02-2024 16:25:10",
    "２０２４-02-16 16:25:10",
    "",
    1708075510,
    None,
]
EXTRA_KEYS = ("extra", "100028", "null", "persen", "mode", "Mode", "psu ", "")


def _replacements(value: Any) -> list[object]:
    """Values of another JSON type (or out of range) for a leaf: none is valid where `value` is."""
    if type(value) is bool:
        return [int(value), str(value).lower(), None, float(value)]
    if type(value) is int:
        return [float(value), str(value), True, False, None, -1 - value, [value]]
    if type(value) is float:  # persen
        return [str(value), True, None, round(value + 0.001, 3), 100.01, -0.01, float("nan"), float("inf")]
    if type(value) is str:
        return [len(value), True, [value], {}]
    if value is None:
        return [0, "", False, {}, []]
    return []


Mutation = Callable[[Any], None]


def _set(at: Loc, key: str | int, value: object) -> Mutation:
    def mutate(doc: Any) -> None:
        _get(doc, at)[key] = copy.deepcopy(value)

    return mutate


def _drop(at: Loc, key: str) -> Mutation:
    def mutate(doc: Any) -> None:
        del _get(doc, at)[key]

    return mutate


def _resize(at: Loc, grow: bool) -> Mutation:
    def mutate(doc: Any) -> None:
        items: list[Any] = _get(doc, at)
        items.append(None) if grow else items.pop()

    return mutate


def _mutations(doc: Any) -> list[tuple[str, Loc, Mutation]]:
    """Every single mutation of `doc`: (what, where, how), each to be applied to a deep copy."""
    out: list[tuple[str, Loc, Mutation]] = []
    for at, node in _nodes(doc):
        if isinstance(node, dict):
            out.extend(("drop key", (*at, key), _drop(at, key)) for key in node)
            out.extend(("add key", (*at, key), _set(at, key, 0)) for key in EXTRA_KEYS if key not in node)
        elif isinstance(node, list) and at and at[-1] == "images":
            out.append(("fourth image", at, _resize(at, grow=True)))
            out.append(("two images", at, _resize(at, grow=False)))
        if not at:
            continue
        parent, last = at[:-1], at[-1]
        for value in BROKEN_TS if last == "ts" else _replacements(node):
            what = "break ts" if last == "ts" else f"retype {type(node).__name__} to {type(value).__name__}"
            out.append((what, at, _set(parent, last, value)))
    return out


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_any_single_mutation_of_a_valid_document_is_rejected(data: st.DataObject) -> None:
    name, doc, check = data.draw(st.sampled_from(VALID), label="document")
    check(copy.deepcopy(doc))  # valid as it is
    what, at, mutate = data.draw(st.sampled_from(_mutations(doc)), label="mutation")
    mutated = copy.deepcopy(doc)
    mutate(mutated)
    with pytest.raises(LayoutError):
        check(mutated)
        pytest.fail(f"{name}: {what} at {'/'.join(map(str, at))} was accepted: {mutated}")


def test_every_kind_of_mutation_is_generated() -> None:
    kinds = {what.split(" to ")[0] for _, doc, _ in VALID for what, _, _ in _mutations(doc)}
    assert {"drop key", "add key", "break ts", "retype int", "retype float", "retype bool", "retype str",
            "retype NoneType", "fourth image", "two images"} <= kinds  # fmt: skip


def test_every_mutation_of_every_valid_document_is_rejected() -> None:
    """Exhaustively (some 10k mutations, a second): not just the ones hypothesis draws."""
    for name, doc, check in VALID:
        for what, at, mutate in _mutations(doc):
            mutated = copy.deepcopy(doc)
            mutate(mutated)
            with pytest.raises(LayoutError):
                check(mutated)
                pytest.fail(f"{name}: {what} at {at} was accepted")


def test_strict_json_and_a_few_named_deviations() -> None:
    with pytest.raises(LayoutError, match="duplicate key"):
        parse(b'{"psu": null, "psu": null}', "dup.json")
    with pytest.raises(LayoutError, match="not JSON"):
        parse(b'{"persen": NaN}', "nan.json")
    with pytest.raises(LayoutError, match="not strict JSON"):
        parse(b"\xff{}", "bytes.json")
    totals = copy.deepcopy(TOTALS)
    totals["chart"]["persen"] = 65.28  # docs/layout.md's example: 15 of 23 TPS is 65.22 %, not 65.28 %
    with pytest.raises(LayoutError, match=r"is not 15/23 TPS = 65\.22"):
        check_totals(totals, "t", PPWP_2024, CHILDREN)
    totals = copy.deepcopy(TOTALS)
    totals["progres"] = {"progres": 24, "total": 23}
    with pytest.raises(LayoutError, match="progres 24 > total 23"):
        check_totals(totals, "t", PPWP_2024, CHILDREN)
    totals = copy.deepcopy(TOTALS)
    totals["table"]["3171"]["status_progress"] = True
    with pytest.raises(LayoutError, match="without votes"):
        check_totals(totals, "t", PPWP_2024, CHILDREN)
    regions = copy.deepcopy(REGIONS)
    regions[1]["id"] = 3172
    with pytest.raises(LayoutError, match="id 3172 != int"):
        check_region_list(regions, "r", "31")
    regions = copy.deepcopy(REGIONS)
    regions[0]["tingkat"] = 3
    with pytest.raises(LayoutError, match="tingkat 3 for a 4-digit"):
        check_region_list(regions, "r", "31")
    with pytest.raises(LayoutError, match="not under 32"):
        check_region_list(REGIONS, "r", "32")
    tps = copy.deepcopy(NO_DATA_TPS)
    tps["status_suara"] = True
    with pytest.raises(LayoutError, match="true without a chart"):
        check_tps(tps, "t", PPWP_2024)


# --- (c) what the real pipeline publishes -------------------------------------------------------------------


async def test_the_published_site_passes_the_strict_reader(pipeline: Pipeline) -> None:
    rng = random.Random(11)
    await pipeline.random_night(rng, 60)
    await pipeline.random_night(rng, 30, contest="pdpr")
    await pipeline.random_night(rng, 30, contest="pkwkp")
    assert await pipeline.cycle() is not None
    _check_all(pipeline)

    await pipeline.random_night(rng, 30)  # corrections and new TPS: an incremental cycle
    await pipeline.random_night(rng, 10, contest="pkwkp")
    result = await pipeline.cycle()
    assert result is not None and not result.full
    _check_all(pipeline)
    _site_deviations_are_caught(pipeline.site)


def _site_deviations_are_caught(site: Path) -> None:
    """The walk is not vacuous: one deviation planted in the published tree and it stops there."""
    tps_file = next(p for p in sorted((site / "pemilu/hhcw/ppwp").rglob("*.json")) if len(p.stem) == 13)
    rel = tps_file.relative_to(site).as_posix()
    original, original_gz = tps_file.read_bytes(), (site / (rel + ".gz")).read_bytes()

    def plant(doc: dict[str, Any]) -> None:
        body = json.dumps(doc, separators=(",", ":")).encode()
        tps_file.write_bytes(body)
        (site / (rel + ".gz")).write_bytes(gzip.compress(body))

    doc = json.loads(original)
    plant({**doc, "suara_flag": True})
    with pytest.raises(LayoutError, match=f"{rel}: keys: missing \\[\\], extra \\['suara_flag'\\]"):
        check_site(site, "ppwp")
    plant({**doc, "status_suara": 1 if doc["status_suara"] else 0})
    with pytest.raises(LayoutError, match="expected true/false"):
        check_site(site, "ppwp")
    tps_file.write_bytes(original)  # the .gz still holds the planted body
    with pytest.raises(LayoutError, match="does not decompress to the file beside it"):
        check_site(site, "ppwp")
    (site / (rel + ".gz")).write_bytes(original_gz)
    check_site(site, "ppwp")
    tps_file.unlink()
    with pytest.raises(LayoutError, match=f"{rel}: missing"):
        check_site(site, "ppwp")
    tps_file.write_bytes(original)
    stray = site / "pemilu/hhcw/ppwp/99.json"
    stray.write_bytes(b"{}")
    with pytest.raises(LayoutError, match="no region list leads to"):
        check_site(site, "ppwp")
    stray.unlink()


def _check_all(pipeline: Pipeline) -> None:
    without_data = quarantined = 0
    for contest in CONTESTS:
        report = check_site(pipeline.site, contest)
        forms = [a for (_, c), a in pipeline.current.items() if c == contest]
        # Against what tally acknowledged, not against publish:
        assert report.tps_counted == sum(not a.quarantined for a in forms), contest
        assert report.tps_not_counted == sum(a.quarantined for a in forms), contest
        assert report.tps_without_data == report.tps - len(forms), contest
        assert report.tps_counted > 0, contest
        pointer = json.loads((pipeline.site / "suara/snapshot.json").read_bytes())
        assert pointer["contests"][contest]["total"] == report.tps
        without_data += report.tps_without_data
        quarantined += report.tps_not_counted
    assert without_data > 0, "the walk should have met TPS without data"
    assert quarantined > 0, "the walk should have met quarantined TPS"
