"""The C.Hasil form (`suara.v1.CHasilForm`) and its JSON shapes.

Three shapes meet here: the signed protobuf, the human JSON a KPPS app or
`suara submit FORM.json` writes, and Sirekap's flat `administrasi` dict, which
suara publishes and hands to the aggregate service. The JSON gives the signing
time as `signed_at_unix_ms` (0 or absent: not said), the protobuf as a Timestamp.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal

from suara.v1 import form_pb2

Scalar = Literal["suara_sah", "suara_tidak_sah", "suara_total"]
Triple = Literal["pemilih_dpt", "pengguna_dpt", "pengguna_dptb", "pengguna_non_dpt", "pengguna_total"]
Sex = Literal["j", "l", "p"]

SCALARS: tuple[Scalar, ...] = ("suara_sah", "suara_tidak_sah", "suara_total")
ADMIN_TRIPLES: tuple[Triple, ...] = (
    "pemilih_dpt",
    "pengguna_dpt",
    "pengguna_dptb",
    "pengguna_non_dpt",
    "pengguna_total",
)
SEXES: tuple[Sex, ...] = ("j", "l", "p")  # jumlah (total), laki-laki, perempuan

# Sirekap's flat `administrasi` keys, each with the proto field it maps to.
_ADMIN_FIELDS: dict[str, tuple[Scalar, None] | tuple[Triple, Sex]] = {
    **{name: (name, None) for name in SCALARS},
    **{f"{triple}_{sex}": (triple, sex) for triple in ADMIN_TRIPLES for sex in SEXES},
}
ADMIN_KEYS = tuple(_ADMIN_FIELDS)

_INT64 = range(-(2**63), 2**63)
_TIMESTAMP_MS = range(-62_135_596_800_000, 253_402_300_800_000)  # a Timestamp's years 1 to 9999
_WIB = timezone(timedelta(hours=7))  # Sirekap's `ts` is Jakarta time
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Violation:
    """One bad field: its path and what is wrong with it, and what is expected."""

    field: str
    description: str


class FormDictError(ValueError):
    """A form's JSON cannot become a CHasilForm; `problems` names every bad key."""

    def __init__(self, problems: list[Violation]) -> None:
        super().__init__("; ".join(f"{p.field}: {p.description}" for p in problems))
        self.problems = problems


def _admin_items(form: form_pb2.CHasilForm) -> Iterator[tuple[str, int | None]]:
    """Every administrasi key with its count, None where the form lacks it."""
    for key, (name, sex) in _ADMIN_FIELDS.items():
        if sex is None:
            yield key, getattr(form, name) if form.HasField(name) else None
        else:
            triple: form_pb2.VoterCount = getattr(form, name)
            yield key, getattr(triple, sex) if form.HasField(name) and triple.HasField(sex) else None


def _set_admin(form: form_pb2.CHasilForm, key: str, value: int) -> None:
    name, sex = _ADMIN_FIELDS[key]
    if sex is None:
        setattr(form, name, value)
    else:
        setattr(getattr(form, name), sex, value)


def set_voter_counts(form: form_pb2.CHasilForm, counts: Iterable[tuple[Triple, int, int]]) -> None:
    """Set each (triple, total, male) with p = total - male: how generators write the five voter counts."""
    for name, j, l in counts:
        triple: form_pb2.VoterCount = getattr(form, name)
        triple.j, triple.l, triple.p = j, l, j - l


def administrasi_of(form: form_pb2.CHasilForm) -> dict[str, int]:
    """The flat Sirekap `administrasi` dict of a well-formed form."""
    admin: dict[str, int] = {}
    for key, value in _admin_items(form):
        if value is None:  # a caller bug: only well-formed forms get this far
            raise ValueError(f"the form has no {key}; check it with find_malformed first")
        admin[key] = value
    return admin


def counts_of(form: form_pb2.CHasilForm) -> dict[str, Any]:
    """The JSON-ready counts the aggregate service takes for one TPS and contest."""
    return {"votes": dict(sorted(form.votes.items())), **administrasi_of(form)}


def form_to_dict(form: form_pb2.CHasilForm) -> dict[str, Any]:
    """The human JSON of a form; absent counts are left out, so any form round-trips
    except one with a VoterCount present but all of j, l, p absent."""
    return {
        "tps": form.tps,
        "contest": form.contest,
        "version": form.version,
        "votes": dict(sorted(form.votes.items())),
        "administrasi": {key: value for key, value in _admin_items(form) if value is not None},
        "photo_sha256": list(form.photo_sha256),
        "signed_at_unix_ms": form.signed_at.ToMilliseconds() if form.HasField("signed_at") else 0,
        **({"election_id": form.election_id} if form.election_id else {}),
    }


_REQUIRED = ("tps", "contest", "version", "votes", "administrasi")
_OPTIONAL = ("photo_sha256", "signed_at_unix_ms", "election_id")  # election_id: else the key file's


def form_from_dict(data: object) -> form_pb2.CHasilForm:
    """Parse the human JSON of a form, naming every bad or missing key at once.

    Missing or null counts are not errors here: they become absent fields, so
    the checks report them with the form's other problems.
    """
    if not isinstance(data, Mapping):
        raise FormDictError([Violation("form", f"must be a JSON object, got {type(data).__name__}")])
    problems: list[Violation] = []
    form = form_pb2.CHasilForm()
    for key in data:
        if key not in _REQUIRED and key not in _OPTIONAL:
            expected = ", ".join(_REQUIRED + _OPTIONAL)
            problems.append(Violation(_show_key(key), f"unknown key; expected only {expected}"))
    for key in _REQUIRED:
        if key not in data:
            problems.append(Violation(key, "missing"))
    for key in ("tps", "contest", "election_id"):
        if key in data:
            if isinstance(data[key], str):
                setattr(form, key, data[key])
            else:
                problems.append(Violation(key, f"must be a string, got {_type_of(data[key])}"))
    if "version" in data and (number := _int64("version", data["version"], problems)) is not None:
        form.version = number
    if "signed_at_unix_ms" in data:
        _read_signed_at(form, data["signed_at_unix_ms"], problems)
    if "votes" in data:
        _read_votes(form, data["votes"], problems)
    if "administrasi" in data:
        _read_administrasi(form, data["administrasi"], problems)
    if "photo_sha256" in data:
        _read_photos(form, data["photo_sha256"], problems)
    if problems:
        raise FormDictError(problems)
    return form


def _read_votes(form: form_pb2.CHasilForm, votes: object, problems: list[Violation]) -> None:
    if not isinstance(votes, Mapping):
        problems.append(Violation("votes", f"must be an object of choice id -> votes, got {_type_of(votes)}"))
        return
    for choice, value in votes.items():
        if not isinstance(choice, str):
            problems.append(Violation(f"votes[{choice!r}]", "choice ids must be strings"))
        elif value is not None and (number := _int64(f"votes[{choice}]", value, problems)) is not None:
            form.votes[choice] = number


def _read_administrasi(form: form_pb2.CHasilForm, admin: object, problems: list[Violation]) -> None:
    if not isinstance(admin, Mapping):
        problems.append(Violation("administrasi", f"must be an object of counts, got {_type_of(admin)}"))
        return
    for key, value in admin.items():
        where = f"administrasi.{_show_key(key)}"
        if key not in _ADMIN_FIELDS:
            problems.append(Violation(where, f"unknown key; expected only {', '.join(ADMIN_KEYS)}"))
        elif value is not None and (number := _int64(where, value, problems)) is not None:
            _set_admin(form, key, number)


def _read_signed_at(form: form_pb2.CHasilForm, value: object, problems: list[Violation]) -> None:
    number = _int64("signed_at_unix_ms", value, problems)
    if not number:  # not an integer (already said), or 0: no signing time
        return
    if number not in _TIMESTAMP_MS:
        problems.append(
            Violation("signed_at_unix_ms", f"must be a time in the years 1 to 9999 (Unix milliseconds), got {number}")
        )
        return
    form.signed_at.FromMilliseconds(number)


def _read_photos(form: form_pb2.CHasilForm, photos: object, problems: list[Violation]) -> None:
    if not isinstance(photos, list):
        problems.append(Violation("photo_sha256", f"must be a list of SHA-256 hex strings, got {_type_of(photos)}"))
        return
    for i, photo in enumerate(photos):
        if isinstance(photo, str):
            form.photo_sha256.append(photo)
        else:
            problems.append(Violation(f"photo_sha256[{i}]", f"must be a string, got {_type_of(photo)}"))


def _int64(where: str, value: object, problems: list[Violation]) -> int | None:
    # bool is an int in Python, but `true` is no count.
    if not isinstance(value, int) or isinstance(value, bool):
        problems.append(Violation(where, f"must be an integer, got {_type_of(value)}"))
        return None
    if value not in _INT64:
        problems.append(Violation(where, f"must fit in a signed 64-bit integer, got {value}"))
        return None
    return value


def _type_of(value: object) -> str:
    return "null" if value is None else f"{type(value).__name__} {_show(value)}"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _show_key(key: object) -> str:
    return key if isinstance(key, str) and len(key) <= 40 else _show(key)


def form_from_sirekap(tps: str, contest: str, version: int, data: Mapping[str, Any]) -> form_pb2.CHasilForm | None:
    """A form from one Sirekap TPS file; None while its chart or administrasi is not in yet.

    The file holds photo URLs, not the photos, so the form binds no photo hashes;
    its `ts` (Sirekap's last update) stands in for the signing time.
    """
    chart, admin = data.get("chart"), data.get("administrasi")
    if chart is None or admin is None:
        return None
    return form_from_dict(
        {
            "tps": tps,
            "contest": contest,
            "version": version,
            "votes": {choice: n for choice, n in chart.items() if choice != "null"},  # "null": null pads it
            "administrasi": {key: n for key, n in admin.items() if key in _ADMIN_FIELDS},
            "signed_at_unix_ms": _wib_to_unix_ms(data.get("ts")),
        }
    )


def _wib_to_unix_ms(ts: object) -> int:
    if not isinstance(ts, str):
        return 0
    try:
        at = datetime.strptime(ts, "%Y-%m-%d %H:%M:%S").replace(tzinfo=_WIB)
    except ValueError:
        return 0
    return (at - _EPOCH) // timedelta(milliseconds=1)
