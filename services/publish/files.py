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
    """`path` is relative to the site root, '/'-separated, without a leading '/'."""

    path: str
    body: bytes
    content_type: str = field(default="")
    cache_control: str = field(default="")

    def __post_init__(self) -> None:
        if self.path.startswith("/") or ".." in self.path.split("/") or not self.path:
            raise ValueError(f"site paths are relative and stay inside the site: {self.path!r}")
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
