"""Form photos: JPEG or PNG by content (not by what the caller says), size-limited, content-addressed."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from suara.election.checks import MAX_PHOTOS
from suara.runtime.errors import FieldProblem

_JPEG = b"\xff\xd8\xff"
_PNG = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Photo:
    sha256: str
    content_type: str
    content: bytes


def sniff(content: bytes) -> str | None:
    if content.startswith(_JPEG):
        return "image/jpeg"
    if content.startswith(_PNG):
        return "image/png"
    return None


def check_photos(
    contents: list[bytes], signed_hashes: list[str], max_bytes: int
) -> tuple[list[Photo], list[FieldProblem]]:
    """Photos that may be stored with a form whose signed bytes list `signed_hashes`."""
    photos: list[Photo] = []
    problems: list[FieldProblem] = []
    if len(contents) > MAX_PHOTOS:
        problems.append(FieldProblem("photos", f"at most {MAX_PHOTOS} photos per form, got {len(contents)}"))
    for i, content in enumerate(contents[:MAX_PHOTOS]):
        field = f"photos[{i}].content"
        if not content:
            problems.append(FieldProblem(field, "empty photo"))
            continue
        if len(content) > max_bytes:
            problems.append(FieldProblem(field, f"photo is {len(content)} bytes; the limit is {max_bytes}"))
            continue
        kind = sniff(content)
        if kind is None:
            problems.append(FieldProblem(field, "not a JPEG or PNG image (checked by content)"))
            continue
        digest = hashlib.sha256(content).hexdigest()
        if digest not in signed_hashes:
            problems.append(
                FieldProblem(field, f"photo sha256 {digest} is not listed in the signed form's photo_sha256")
            )
            continue
        photos.append(Photo(digest, kind, content))
    return photos, problems
