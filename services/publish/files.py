"""One file of the published site, as every sink takes it."""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field

from services.publish.cache import cache_control_for, content_type_for

# Compressed once, served many times: level 9 costs little more on small JSON and every byte
# counts on a phone's first load. mtime=0 so the same body always gives the same .gz bytes.
_GZIP_LEVEL = 9
_COMPRESSIBLE = (".json", ".html", ".css", ".js", ".svg", ".txt")


@dataclass(frozen=True)
class SiteFile:
    """`path` is relative to the site root, '/'-separated, without a leading '/'.

    `same_as`: the path of a file already written to the same sink, in an earlier `write` call, whose
    body is `body` (and whose `.gz`, when compressible, is therefore `gzipped()`). A sink that can
    (LocalSink) then hard-links that file instead of writing the bytes again; one that cannot (S3Sink)
    writes `body` as usual. `body` is always the truth: a sink that cannot confirm the promise writes it.
    """

    path: str
    body: bytes
    content_type: str = field(default="")
    cache_control: str = field(default="")
    same_as: str | None = field(default=None)

    def __post_init__(self) -> None:
        for path in (self.path, self.same_as):
            if path is not None and (path.startswith("/") or ".." in path.split("/") or not path):
                raise ValueError(f"site paths are relative and stay inside the site: {path!r}")
        if not self.content_type:
            object.__setattr__(self, "content_type", content_type_for(self.path))
        if not self.cache_control:
            object.__setattr__(self, "cache_control", cache_control_for(self.path))

    @property
    def compressible(self) -> bool:
        return self.path.endswith(_COMPRESSIBLE)

    def gzipped(self) -> bytes | None:
        """The `.gz` written beside it (nginx gzip_static, aiohttp), or None for what is already compressed."""
        return gzip.compress(self.body, compresslevel=_GZIP_LEVEL, mtime=0) if self.compressible else None
