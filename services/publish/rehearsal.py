"""A rehearsal's site: every file of it says SIMULASI, so nobody takes its numbers for the real count.

Publish marks nothing itself: it writes through `RehearsalSink`, which adds the marker to each file on
its way to the real sink. Every JSON object gets a last key `"simulasi": "<election id>"`; in a JSON
list, and in `pemilu/{c}.json` (whose keys are choice ids, read as such by every consumer), each object
in it does. Every HTML page gets a banner right after `<body>` and "SIMULASI" in its title. The
marker is added the same way to the same bytes, so files that a cycle promises are equal (`same_as`)
stay equal, and `read` hands back the unmarked bytes, as the cycle wrote them, so its comparisons hold.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from typing import Any

from services.publish.files import SiteFile
from services.publish.sinks.base import Sink

MARKER = "simulasi"
BANNER_CLASS = "simulasi"
_BODY = re.compile(rb"<body[^>]*>")
_TITLE = re.compile(rb"<title>")


def _dumps(doc: object) -> bytes:  # documents.dumps' encoding, so unmarking gives the cycle's own bytes
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def banner(election_id: str) -> bytes:
    text = f"SIMULASI \u00b7 gladi {election_id} \u00b7 bukan hasil pemilu / not election results"
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return f'\n<p class="{BANNER_CLASS}" role="alert" lang="id">{escaped}</p>'.encode()


def mark(body: bytes, path: str, election_id: str) -> bytes:
    """`body` of the site file at `path`, marked as election `election_id`'s rehearsal."""
    if path.endswith(".json"):
        return _dumps(_marked(json.loads(body), election_id, _by_id(path)))
    if path.endswith(".html"):
        match = _BODY.search(body)
        if match is None:
            raise ValueError(f"{path}: a page without <body> cannot carry the SIMULASI banner")
        body = body[: match.end()] + banner(election_id) + body[match.end() :]
        return _TITLE.sub(b"<title>SIMULASI \xe2\x80\x94 ", body, count=1)
    return body


def unmark(body: bytes, path: str, election_id: str) -> bytes:
    """The inverse of `mark` for JSON (what the cycle compares); other files as they are."""
    if not path.endswith(".json"):
        return body
    doc = json.loads(body)
    for obj in _carriers(doc, _by_id(path)):
        if isinstance(obj, dict) and obj.get(MARKER) == election_id:
            del obj[MARKER]
    return _dumps(doc)


def _by_id(path: str) -> bool:
    """A file whose keys are ids (the choices, `pemilu/{c}.json`): its entries carry the marker, not it."""
    return path.startswith("pemilu/") and path.count("/") == 1


def _carriers(doc: Any, by_id: bool) -> list[Any]:
    """What carries the marker in `doc`: itself (an object), or its items (a list, or an object of ids)."""
    if isinstance(doc, list):
        return doc
    if by_id and isinstance(doc, dict):
        return list(doc.values())
    return [doc]


def _marked(doc: Any, election_id: str, by_id: bool) -> Any:
    if isinstance(doc, dict) and not by_id:
        return {**doc, MARKER: election_id}
    if isinstance(doc, dict):
        return {key: {**item, MARKER: election_id} if isinstance(item, dict) else item for key, item in doc.items()}
    if isinstance(doc, list):
        return [{**item, MARKER: election_id} if isinstance(item, dict) else item for item in doc]
    return doc


def carries_marker(body: bytes, path: str, election_id: str) -> bool:
    """Whether a published file says it is election `election_id`'s rehearsal (what `suara rehearsal wipe`
    checks before it removes a site, and what anyone may check of a file)."""
    if path.endswith(".html"):
        return banner(election_id) in body
    if not path.endswith(".json"):
        return False
    carriers = _carriers(json.loads(body), _by_id(path))
    return bool(carriers) and all(isinstance(o, dict) and o.get(MARKER) == election_id for o in carriers)


class RehearsalSink:
    """Any sink, with every file marked on the way in (and unmarked on the way back out)."""

    def __init__(self, inner: Sink, election_id: str) -> None:
        self.inner = inner
        self.election_id = election_id
        self.cheap_reads = inner.cheap_reads

    async def write(self, files: Sequence[SiteFile]) -> None:
        await self.inner.write([dataclasses.replace(f, body=mark(f.body, f.path, self.election_id)) for f in files])

    async def exists(self, path: str) -> bool:
        return await self.inner.exists(path)

    async def read(self, path: str) -> bytes | None:
        body = await self.inner.read(path)
        return None if body is None else unmark(body, path, self.election_id)

    async def sweep_temp(self) -> int:
        return await self.inner.sweep_temp()

    async def close(self) -> None:
        await self.inner.close()

    def describe(self) -> str:
        return f"{self.inner.describe()} (rehearsal {self.election_id}: every file marked SIMULASI)"


def site_sink(inner: Sink, election_id: str, rehearsal: bool) -> Sink:
    """The sink publish writes to for this election: marked when it is a rehearsal."""
    return RehearsalSink(inner, election_id) if rehearsal else inner
