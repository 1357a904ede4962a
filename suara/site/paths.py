"""Where each published file lives, relative to the site root: docs/layout.md's tables as functions.

Every path publish writes, and every path a reader of the site (`suara audit site`, the load test, the
recap tools) reads, is built here, so the layout is read in one place; what goes inside the files is
publish's documents.py's.
"""

from __future__ import annotations

from suara.election.codes import path_of

POINTER = "suara/snapshot.json"
CHAIN_KEYS = "suara/kunci-rantai.json"  # tally's chain keys, which sign the heads the pointer and history carry


def area_path(area: str) -> str:
    """'' → '', '3101011001' → '31/3101/310101/3101011001' (how Sirekap nests every code under its parents)."""
    return path_of(area)


def totals_path(contest: str, area: str) -> str:
    return f"pemilu/hhcw/{contest}.json" if area == "" else f"pemilu/hhcw/{contest}/{area_path(area)}.json"


def tps_path(contest: str, tps: str) -> str:
    """A TPS file: under its desa's totals, as Sirekap nests it."""
    return f"pemilu/hhcw/{contest}/{area_path(tps)}.json"


def region_path(contest: str, area: str) -> str:
    return f"wilayah/pemilu/{contest}/0.json" if area == "" else f"wilayah/pemilu/{contest}/{area_path(area)}.json"


def status_path(contest: str, area: str) -> str:
    return f"suara/status/{contest}.json" if area == "" else f"suara/status/{contest}/{area_path(area)}.json"


def recap_path(contest: str, area: str) -> str:
    """An area's recap against the units it sums (a recapped area: province, kabupaten/kota or kecamatan)."""
    return f"suara/rekap/{contest}/{area_path(area)}.json"


def candidates_path(contest: str) -> str:
    return f"pemilu/{contest}.json"


def no_data_path(contest: str) -> str:
    """The contest's "no data yet" TPS file: every such TPS file of a rebuild is a hard link to it."""
    return f"suara/kosong/{contest}.json"


def nist_path(contest: str) -> str:
    return f"suara/nist/{contest}.json"


def history_index_path(contest: str) -> str:
    return f"suara/riwayat/{contest}.json"


def history_path(contest: str, snapshot: int) -> str:
    """One snapshot's history entry: never rewritten once published."""
    return f"suara/riwayat/{contest}/{snapshot}.json"


def feed_page_path(snapshot: int, part: int) -> str:
    """One page of a snapshot's changes: never rewritten once written."""
    return f"suara/perubahan/{snapshot}/{part}.json"


FEED_HEAD = "suara/perubahan.json"  # the feed's entry point: its oldest and newest snapshot
BULK_INDEX = "suara/unduh.json"  # the bulk files, and the snapshot they were made after


def bulk_path(contest: str) -> str:
    """Every TPS of a contest, one CSV row each, gzipped."""
    return f"suara/unduh/{contest}.csv.gz"


def photo_path(sha256: str, content_type: str = "image/jpeg") -> str:
    return f"foto/{sha256[:2]}/{sha256}.{'png' if content_type == 'image/png' else 'jpg'}"


def photo_url(base: str, sha256: str) -> str:
    """A photo in tally's photo bucket, as readers reach it: its key there (suara/runtime/objects.py) under `base`."""
    return f"{base}/{sha256[:2]}/{sha256}"
