"""Form photos: a JPEG or PNG that decodes (suara.election.photos), size-limited, content-addressed."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from suara.election import photos as photo_rules
from suara.election.checks import MAX_PHOTOS
from suara.runtime.errors import FieldProblem


@dataclass(frozen=True)
class Photo:
    sha256: str
    content_type: str
    content: bytes


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
        kind = photo_rules.sniff(content)
        if kind is None:
            problems.append(FieldProblem(field, "not a JPEG or PNG image (checked by content)"))
            continue
        digest = hashlib.sha256(content).hexdigest()
        if digest not in signed_hashes:
            problems.append(
                FieldProblem(field, f"photo sha256 {digest} is not listed in the signed form's photo_sha256")
            )
            continue
        wrong = photo_rules.problem(content)  # last: decoding costs the most
        if wrong is not None:
            problems.append(FieldProblem(field, wrong))
            continue
        photos.append(Photo(digest, kind, content))
    return photos, problems
