"""The published documents, rendered from aggregate's views: pure functions, no I/O (where each goes: paths.py).

Each file is built from one AreaView (an area and its children read in one snapshot), so a file never
mixes states. Every value comes from the data, never from the clock, so a rebuild writes the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from suara.election.chain import SignedHead
from suara.election.checks import MAX_PHOTOS
from suara.election.codes import KECAMATAN_LENGTH, LENGTHS, RECAP_LENGTHS, TPS_LENGTH
from suara.election.contest import CONTEST_KINDS, Contest
from suara.site.paths import photo_path, photo_url
from suara.v1 import aggregate_pb2

WIB = timezone(timedelta(hours=7))  # Sirekap writes Jakarta time
LEVEL_OF_LENGTH = {n: level for level, n in enumerate(LENGTHS, start=1)}  # `tingkat`
# The published names, by hand: renaming an API value must not change a published file.
RECONCILIATION_NAMES = {
    aggregate_pb2.RECONCILIATION_STATUS_MATCH: "MATCH",
    aggregate_pb2.RECONCILIATION_STATUS_MISMATCH: "MISMATCH",
    aggregate_pb2.RECONCILIATION_STATUS_INCOMPLETE: "INCOMPLETE",
    aggregate_pb2.RECONCILIATION_STATUS_NO_RECAP: "NO_RECAP",
}


def dumps(doc: object) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def loads(body: bytes) -> Any:
    return json.loads(body)


def wib(unix_ms: int) -> str:
    return datetime.fromtimestamp(unix_ms / 1000, WIB).strftime("%Y-%m-%d %H:%M:%S")


def wib_of(stamp: Timestamp) -> str:
    """`wib` of an API time (unset: the epoch, as a row never changed has always shown)."""
    return wib(stamp.seconds * 1000 + stamp.nanos // 1_000_000)  # ToMilliseconds, without its Python call


def iso(unix_ms: int) -> str:
    return datetime.fromtimestamp(unix_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def persen(reported: int, total: int) -> float:
    return round(100 * reported / total, 2) if total else 0.0


def _votes(contest: Contest, totals: aggregate_pb2.Totals) -> dict[str, Any]:
    return {c.id: totals.votes.get(c.id, 0) for c in contest.choices}


def candidates(contest: Contest, ts: str) -> dict[str, Any]:
    return {c.id: {"nama": c.nama, "nomor_urut": c.nomor_urut, "warna": c.warna, "ts": ts} for c in contest.choices}


def region_list(children: Iterable[aggregate_pb2.AreaRow]) -> list[dict[str, Any]]:
    return [
        {"nama": child.name, "id": int(child.area), "kode": child.area, "tingkat": LEVEL_OF_LENGTH[len(child.area)]}
        for child in children
    ]


def totals(contest: Contest, view: aggregate_pb2.AreaView) -> dict[str, Any]:
    area = view.area
    table: dict[str, Any] = {}
    for child in view.children:
        progress = persen(child.tps_reported, child.tps_total)
        if child.tps_reported:
            table[child.area] = {
                **_votes(contest, child.totals),
                "persen": progress,
                "psu": None,
                "status_progress": True,
            }
        else:  # Sirekap's shape for a child without data
            table[child.area] = {"persen": progress, "psu": None, "status_progress": False}
    return {
        "ts": wib_of(view.last_change_at),
        "psu": None,
        "mode": "hhcw",
        "chart": {**_votes(contest, area.totals), "persen": persen(area.tps_reported, area.tps_total)},
        "table": table,
        "progres": {"progres": area.tps_reported, "total": area.tps_total},
    }


def tps(
    contest: Contest,
    row: aggregate_pb2.AreaRow,
    photo_types: Mapping[str, str],
    no_data_ts: str,
    *,
    photo_base: str | None = None,
) -> dict[str, Any]:
    """One TPS's Sirekap file. A quarantined form is shown as signed, with both statuses false.

    Photos are site paths (copied into the site), or, given `photo_base`, URLs in tally's photo bucket."""
    if row.version == 0:
        return no_data_tps(no_data_ts)
    images: list[str | None] = [
        "/" + photo_path(sha, photo_types.get(sha, "image/jpeg")) if photo_base is None else photo_url(photo_base, sha)
        for sha in row.photo_sha256[:MAX_PHOTOS]
    ]
    images += [None] * (MAX_PHOTOS - len(images))  # Sirekap's file always has a slot per photo
    submitted = row.submitted
    # An update without administrasi (a sender older than it) shows none, as Sirekap does before that
    # section is in, rather than a partial one a strict reader would refuse.
    # Keys in Sirekap's own order (PostgreSQL jsonb's: by length, then bytes), and always the same order.
    administrasi = dict(sorted(row.administrasi.items(), key=_jsonb_order)) if row.administrasi else None
    counted = not row.tps_quarantined
    return {
        "mode": "hhcw",
        "chart": {"null": None, **_votes(contest, submitted)},
        "images": images,
        "administrasi": administrasi,
        "psu": None,
        "ts": wib_of(row.changed_at),
        "status_suara": counted,
        "status_adm": counted,
    }


def no_data_tps(no_data_ts: str) -> dict[str, Any]:
    """The file of a TPS without a form: the same for every such TPS (`ts` is the registry's load time)."""
    return {
        "mode": "hhcw",
        "chart": None,
        "images": [None, None, None],
        "administrasi": None,
        "psu": None,
        "ts": no_data_ts,
        "status_suara": False,
        "status_adm": False,
    }


def _jsonb_order(item: tuple[str, int]) -> tuple[int, str]:
    return len(item[0]), item[0]


def reconciliation(rec: aggregate_pb2.Reconciliation) -> dict[str, Any]:
    return {
        "status": RECONCILIATION_NAMES.get(rec.status, "NO_RECAP"),
        "recap_version": rec.recap_version or None,
        "differences": [
            {"field": d.field, "recap": d.recap, "digital": d.digital, "difference": d.difference}
            for d in rec.differences
        ],
    }


def status(view: aggregate_pb2.AreaView, recap_mismatches: Mapping[str, int] | None = None) -> dict[str, Any]:
    """suara's own per-area file: quarantine flags and reconciliation, for the area and its children.

    `recap_mismatches`: area → how many recaps at or below it are MISMATCH (`mismatch_counts`); an area or
    child with any says how many (`recap_mismatches`), so every level counts them and a reader finds the
    way down to each."""
    area = view.area
    counts = recap_mismatches or {}
    children: dict[str, Any] = {}
    for child in view.children:
        entry: dict[str, Any] = {}
        if counts.get(child.area):
            entry["recap_mismatches"] = counts[child.area]
        if child.tps_quarantined:
            entry["tps_quarantined"] = child.tps_quarantined
        if child.failed_checks and child.tps_quarantined:
            entry["failed_checks"] = list(child.failed_checks)
        if child.reconciliation not in (
            aggregate_pb2.RECONCILIATION_STATUS_UNSPECIFIED,
            aggregate_pb2.RECONCILIATION_STATUS_NO_RECAP,
        ):
            entry["reconciliation"] = RECONCILIATION_NAMES[child.reconciliation]
        if entry:
            children[child.area] = entry
    has_recap = len(area.area) in RECAP_LENGTHS and view.HasField("reconciliation")
    doc = {  # no `ts`: the file then changes only when a flag does, and publish skips rewriting it
        "kode": area.area,
        "tps_quarantined": area.tps_quarantined,
        "reconciliation": reconciliation(view.reconciliation) if has_recap else None,
        "children": children,
    }
    if counts.get(area.area):
        doc["recap_mismatches"] = counts[area.area]
    return doc


def mismatch_counts(mismatched: Iterable[str]) -> dict[str, int]:
    """Area → how many of these recapped areas (in MISMATCH) are it or below it, the nation ("") included."""
    counts: dict[str, int] = {}
    for area in mismatched:
        for at in ("", *(area[:n] for n in LENGTHS if n <= len(area))):
            counts[at] = counts.get(at, 0) + 1
    return counts


def has_recap(view: aggregate_pb2.AreaView) -> bool:
    """Whether the area is one a recap is signed for, and has one (its recap file is then published)."""
    return (
        len(view.area.area) in RECAP_LENGTHS
        and view.HasField("reconciliation")
        and view.reconciliation.status
        not in (aggregate_pb2.RECONCILIATION_STATUS_UNSPECIFIED, aggregate_pb2.RECONCILIATION_STATUS_NO_RECAP)
    )


def _value(totals: aggregate_pb2.Totals, field: str) -> int:
    """A reconciliation field ("votes[100025]", "suara_sah", …) of these totals."""
    if field.startswith("votes[") and field.endswith("]"):
        return int(totals.votes.get(field[len("votes[") : -1], 0))
    return int(getattr(totals, field))


def recap_units(view: aggregate_pb2.AreaView, units: Sequence[aggregate_pb2.AreaRow]) -> dict[str, Any]:
    """suara/rekap/…: an area's recap against the units it sums (a kecamatan's TPS; a kabupaten/kota's
    kecamatan; a province's kabupaten/kota), each with its digital number of every field that differs.

    The area's digital count is the sum of its units' `digital` (what counts: zero for a TPS without a
    form or quarantined), so a reader sees which units make up the sum that disagrees with the paper, and
    checks each against its form (or its own recap). A TPS also shows what its form says as signed
    (`signed`, also when quarantined: a recap may have counted its paper)."""
    rec = view.reconciliation
    fields = [d.field for d in rec.differences]
    rows = []
    for unit in units:
        entry: dict[str, Any] = {"kode": unit.area, "nama": unit.name}
        if len(unit.area) == TPS_LENGTH:
            entry["status"] = "kosong" if unit.version == 0 else "karantina" if unit.tps_quarantined else "dihitung"
            entry["versi"] = unit.version
        else:
            entry.update(progres=unit.tps_reported, total=unit.tps_total, karantina=unit.tps_quarantined)
            entry["reconciliation"] = RECONCILIATION_NAMES.get(unit.reconciliation, "NO_RECAP")
        entry["digital"] = {f: _value(unit.totals, f) for f in fields}
        if len(unit.area) == TPS_LENGTH and unit.version:
            entry["signed"] = {f: _value(unit.submitted, f) for f in fields}
        rows.append(entry)
    return {
        "kode": view.area.area,
        **reconciliation(rec),
        "digital": {f: _value(rec.digital, f) for f in fields},
        "recap": {f: _value(rec.recap, f) for f in fields},
        "unit": "tps" if len(view.area.area) == KECAMATAN_LENGTH else "wilayah",
        "units": rows,
    }


def progress(area: aggregate_pb2.AreaRow) -> dict[str, Any]:
    return {
        "progres": area.tps_reported,
        "total": area.tps_total,
        "quarantined": area.tps_quarantined,
        "persen": persen(area.tps_reported, area.tps_total),
    }


def history_entry(
    contest: Contest,
    snapshot: int,
    national: aggregate_pb2.AreaView,
    chain_head: SignedHead | None = None,
    chain_heads: Sequence[SignedHead] = (),
) -> dict[str, Any]:
    """National and provincial totals at one snapshot, with the chain head(s) the snapshot published."""

    def row(area: aggregate_pb2.AreaRow) -> dict[str, Any]:
        return {**_votes(contest, area.totals), **progress(area)}

    return {
        "snapshot": snapshot,
        "ts": wib_of(national.last_change_at),
        "sequence": national.sequence,
        "nasional": row(national.area),
        "provinsi": {child.area: row(child) for child in national.children},
        "chain_head": signed_head(chain_head),
        **every_head(chain_heads),
    }


def every_head(heads: Sequence[SignedHead]) -> dict[str, Any]:
    """With several chains, all their signed heads under `chain_heads` (docs/layout.md); with one, nothing:
    `chain_head` is the whole chain, and one-chain sites stay as they were."""
    return {"chain_heads": [signed_head(h) for h in heads]} if len(heads) > 1 else {}


def history_index(entries: Sequence[tuple[int, str]]) -> list[dict[str, Any]]:
    return [{"snapshot": snapshot, "ts": ts} for snapshot, ts in entries]


def _contest_order(contest: str) -> tuple[int, str]:
    return (CONTEST_KINDS.index(contest) if contest in CONTEST_KINDS else len(CONTEST_KINDS), contest)


def signed_head(head: SignedHead | None) -> dict[str, Any] | None:
    """A signed chain head as the pointer and every history entry carry it (docs/layout.md)."""
    if head is None:
        return None
    several = {"chain": head.chain, "chains": head.chains} if head.chains > 1 else {}
    return {
        **several,
        "position": head.position,
        "hash": head.hash.hex(),
        "key_id": head.key_id,
        "signature": head.signature.hex(),
    }


def chain_keys(keys: Sequence[tuple[str, bytes]]) -> dict[str, Any]:
    """suara/kunci-rantai.json: every key tally has signed the published heads with."""
    return {
        "algorithm": "Ed25519",
        "keys": [{"key_id": key_id, "public_key": public_key.hex()} for key_id, public_key in keys],
    }


def pointer(
    *,
    snapshot: int,
    now_unix_ms: int,
    sequence: int,
    chain_head: SignedHead | None,
    nationals: Mapping[str, aggregate_pb2.AreaView],
    caught_up: bool,
    chain_heads: Sequence[SignedHead] = (),
) -> dict[str, Any]:
    return {
        "snapshot": snapshot,
        "ts": wib(now_unix_ms),
        "generated_at": iso(now_unix_ms),
        "aggregate_sequence": sequence,
        "caught_up": caught_up,
        "chain_head": signed_head(chain_head),
        **every_head(chain_heads),
        # In the election's own order (president first): the page opens on the first one.
        "contests": {contest: progress(nationals[contest].area) for contest in sorted(nationals, key=_contest_order)},
    }
