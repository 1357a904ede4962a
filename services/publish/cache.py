"""Cache policy and content type per kind of published file: one table, used by every sink and server.

What changes with every snapshot gets a short max-age, so a reader is at most seconds behind, plus
`stale-while-revalidate` (a cache answers at once while it refetches) and `stale-if-error` (a cache
keeps serving the last good copy for a day while the origin is down). Only what never changes once
written (photos, named by their hash; one snapshot's history entry or feed page) is cached for a year, `immutable`:
a file rewritten in place (the history list `suara/riwayat/{c}.json`, every snapshot) never is, or
readers would keep a stale copy for a year.

Every answer, whatever the file, also carries SECURITY_HEADERS: the page runs no inline script or
style and loads nothing from elsewhere, so a value that slips into the page as markup cannot run.
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
    ("suara/perubahan/", IMMUTABLE),  # one snapshot's feed page, written once (its head, perubahan.json, is not)
    ("wilayah/", SLOW),  # region lists change only when the registry is reloaded
)
_HISTORY = "suara/riwayat/"  # {contest}.json: the list, rewritten every snapshot; {contest}/{n}.json: never
_SLOW_SUFFIXES = (".css", ".js", ".svg", ".ico", ".png")

# The page's own files only ('self'); data: for the empty favicon; no inline script or style, no frames,
# no forms, no <base>. nginx (deploy/nginx/*.conf) sends the same three headers.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",  # a photo is never taken for HTML, whatever its bytes
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
}

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
    if path.startswith(_HISTORY):
        # One snapshot's entry is never rewritten; the contest's list of them is, every snapshot.
        return IMMUTABLE if "/" in path.removeprefix(_HISTORY) else CHANGING
    if path.startswith("pemilu/") and path.count("/") == 1:
        return SLOW  # pemilu/{contest}.json: the candidate list
    if path.endswith(_SLOW_SUFFIXES):
        return SLOW
    return CHANGING  # totals, TPS files, per-area status, the page itself


def content_type_for(path: str) -> str:
    """The type of the body (for `x.json.gz` that is the JSON's: it is served with Content-Encoding: gzip).

    A bulk download (`x.csv.gz`) is a gzip file of its own, downloaded as it is."""
    if path.endswith(".csv.gz"):
        return "application/gzip"
    path = path.removesuffix(".gz")
    dot = path.rfind(".")
    suffix = path[dot:] if dot >= 0 else ""
    return _TYPES.get(suffix) or mimetypes.guess_type(path)[0] or "application/octet-stream"
