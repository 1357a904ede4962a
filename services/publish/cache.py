"""Cache policy and content type per kind of published file: one table, used by every sink and server.

What changes with every snapshot gets a short max-age, so a reader is at most seconds behind, plus
`stale-while-revalidate` (a cache answers at once while it refetches) and `stale-if-error` (a cache
keeps serving the last good copy for a day while the origin is down). What never changes once
written (photos, named by their hash; one snapshot's history entry) is cached for a year.
"""

from __future__ import annotations

import mimetypes

POINTER = "public, max-age=5, stale-while-revalidate=30, stale-if-error=86400"
CHANGING = "public, max-age=15, stale-while-revalidate=60, stale-if-error=86400"
SLOW = "public, max-age=3600, stale-while-revalidate=86400, stale-if-error=604800"
IMMUTABLE = "public, max-age=31536000, immutable"

# First match wins; paths are relative to the site root.
_RULES: tuple[tuple[str, str], ...] = (
    ("suara/snapshot.json", POINTER),
    ("foto/", IMMUTABLE),
    ("suara/riwayat/", IMMUTABLE),  # suara/riwayat/{contest}/{snapshot}.json: one snapshot, never rewritten
    ("wilayah/", SLOW),  # region lists change only when the registry is reloaded
)
_SLOW_SUFFIXES = (".css", ".js", ".svg", ".ico", ".png")

_TYPES = {
    ".json": "application/json",
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".jpg": "image/jpeg",
    ".png": "image/png",
    ".gz": "application/gzip",
}


def cache_control_for(path: str) -> str:
    path = path.lstrip("/").removesuffix(".gz")
    for prefix, policy in _RULES:
        if path.startswith(prefix):
            return policy
    if path.startswith("pemilu/") and path.count("/") == 1:
        return SLOW  # pemilu/{contest}.json: the candidate list
    if path.endswith(_SLOW_SUFFIXES):
        return SLOW
    return CHANGING  # totals, TPS files, per-area status, the page itself


def content_type_for(path: str) -> str:
    """The type of the body (for `x.json.gz` that is the JSON's: it is served with Content-Encoding: gzip)."""
    path = path.removesuffix(".gz")
    dot = path.rfind(".")
    suffix = path[dot:] if dot >= 0 else ""
    return _TYPES.get(suffix) or mimetypes.guess_type(path)[0] or "application/octet-stream"
