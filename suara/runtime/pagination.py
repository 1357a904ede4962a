"""List RPCs a page at a time, the AIP-158 way: `page_size`, an opaque `page_token`, `next_page_token`.

Pages are keyset pages: a token carries the ordering key of the last item returned, and the next
page starts strictly after it (never OFFSET), so an item inserted meanwhile neither shifts a page
nor appears twice. A token is bound to its RPC and to the request's filters: used with other
filters it is refused (INVALID_ARGUMENT naming page_token) rather than answered with a wrong page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc

from suara.runtime.errors import FieldProblem, ServiceError

Key = tuple[str | int, ...]
T = TypeVar("T")
_NOT_A_TOKEN = "is not a page token of this API; pass a next_page_token as it came"


class InvalidPage(ServiceError):
    """A bad page_size or page_token: nothing was read."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field} {description}", violations=[FieldProblem(field, description)])


@dataclass(frozen=True)
class Pager:
    """The paging rules of one List RPC: its page sizes, and the types of its ordering key's columns."""

    method: str  # binds tokens to this RPC
    default_size: int
    max_size: int
    key_types: tuple[type, ...]

    def size(self, requested: int) -> int:
        """0 → the default; above the maximum → the maximum (AIP-158 coerces); negative → InvalidPage."""
        if requested < 0:
            raise InvalidPage("page_size", f"must not be negative, got {requested}")
        return min(requested or self.default_size, self.max_size)

    def after(self, token: str, filters: Sequence[object]) -> Key | None:
        """The key the page starts after; None for the first page (an empty token)."""
        if not token:
            return None
        try:
            padded = token + "=" * (-len(token) % 4)
            data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        except (ValueError, binascii.Error, UnicodeError):
            raise InvalidPage("page_token", _NOT_A_TOKEN) from None
        if not isinstance(data, dict) or not isinstance(data.get("k"), list) or data.get("q") != self._bound(filters):
            raise InvalidPage("page_token", f"was not issued for this {self.method} request (same filters)")
        key = data["k"]
        if len(key) != len(self.key_types) or not all(
            type(value) is kind for value, kind in zip(key, self.key_types, strict=True)
        ):
            raise InvalidPage("page_token", _NOT_A_TOKEN)
        return tuple(key)

    def page(
        self, rows: Sequence[T], size: int, key: Callable[[T], Key], filters: Sequence[object]
    ) -> tuple[list[T], str]:
        """The page from rows read with LIMIT size + 1, and its next_page_token ("" on the last page)."""
        if len(rows) <= size:
            return list(rows), ""
        page = list(rows[:size])
        body = json.dumps({"q": self._bound(filters), "k": list(key(page[-1]))}, separators=(",", ":"))
        return page, base64.urlsafe_b64encode(body.encode()).decode("ascii").rstrip("=")

    def _bound(self, filters: Sequence[object]) -> str:
        text = json.dumps([self.method, *filters], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]
