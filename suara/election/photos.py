"""A form photo: a JPEG or PNG that decodes, judged by its bytes, never by a name or a header alone.

tally refuses a photo that does not decode (a "JPEG" whose bytes after the magic number are HTML);
publish checks every photo again, with its SHA-256, before it writes it to the public site, since
what is in the database may be older than these checks, or altered.
"""

from __future__ import annotations

import hashlib
import io
import warnings

from PIL import Image

JPEG: tuple[str, bytes] = ("image/jpeg", b"\xff\xd8\xff")
PNG: tuple[str, bytes] = ("image/png", b"\x89PNG\r\n\x1a\n")
_FORMAT = {JPEG[0]: "JPEG", PNG[0]: "PNG"}
MAX_PIXELS = 50_000_000  # a phone's photo of a paper form is a few megapixels; more is a decompression bomb


def sniff(content: bytes) -> str | None:
    """The type the first bytes claim: image/jpeg, image/png, or None."""
    for kind, magic in (JPEG, PNG):
        if content.startswith(magic):
            return kind
    return None


def problem(content: bytes) -> str | None:
    """Why `content` is not a photo (what to fix), or None when it is a JPEG or PNG that decodes whole."""
    kind = sniff(content)
    if kind is None:
        return "not a JPEG or PNG image (checked by content)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(content), formats=[_FORMAT[kind]]) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    return f"{width}x{height} pixels; at most {MAX_PIXELS} (send the photo at a phone's resolution)"
                if kind == JPEG[0]:
                    # Decoded at 1/8 scale: every entropy-coded byte is still read and checked, at a
                    # fraction of the cost of a full decode.
                    image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        why = "unreadable" if str(exc).startswith("cannot identify image file") else str(exc)[:120]
        return f"does not decode as {_FORMAT[kind]} ({why}); send the photo file as the camera saved it"
    return None


def verified(content: bytes, sha256: str) -> str | None:
    """Why `content` may not be published as the photo named `sha256`, or None when it may."""
    digest = hashlib.sha256(content).hexdigest()
    if digest != sha256:
        return f"its bytes hash to {digest}, not to the {sha256} recorded for it"
    return problem(content)
