"""What every signed payload (a C.Hasil form, a recap) must satisfy before its contents are read.

A signed payload is a document: a field the server does not know is a field nobody can read, check
or publish, yet it would be stored and chained as if it meant something (and it costs storage at
will). So unknown fields are refused, by their path, rather than carried along.
"""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from suara.runtime.errors import FailedPrecondition, FieldProblem

_MESSAGE = FieldDescriptor.CPPTYPE_MESSAGE


def unknown_fields(message: Message, path: str = "") -> list[str]:
    """The path of every field of `message` (nested messages included) its schema does not know,
    as `path.#number`; [] if none."""
    return list(_walk(message, path))


def _walk(message: Message, path: str) -> Iterator[str]:
    unknown = UnknownFieldSet(message)
    numbers = sorted({unknown[i].field_number for i in range(len(unknown))})
    for number in numbers:
        yield f"{path}#{number}" if not path else f"{path}.#{number}"
    for field, value in message.ListFields():
        if field.cpp_type != _MESSAGE:
            continue
        where = f"{path}.{field.name}" if path else field.name
        kind = field.message_type
        assert kind is not None  # a message field always has its type
        if kind.GetOptions().map_entry:
            if kind.fields_by_name["value"].cpp_type == _MESSAGE:
                for key, item in value.items():
                    yield from _walk(item, f"{where}[{key}]")
        elif field.is_repeated:
            for i, item in enumerate(value):
                yield from _walk(item, f"{where}[{i}]")
        else:
            yield from _walk(value, where)


def describe_unknown(paths: list[str], what: str) -> str:
    shown = ", ".join(paths[:10]) + (f" and {len(paths) - 10} more" if len(paths) > 10 else "")
    return (
        f"has fields {what} does not define ({shown}): sign only the fields of {what}; "
        "a client built from newer protos must not send fields this server cannot check"
    )


def other_election(what: str, claimed: str, serving: str) -> FailedPrecondition:
    """The refusal of a signed document of another election than the registry's (or of none)."""
    said = repr(claimed) if claimed else "no election"
    return FailedPrecondition(
        f"this {what} is of {said}, and this deployment serves election {serving!r}; nothing was stored",
        violations=[
            FieldProblem(
                "election_id",
                f"got {said}, expected {serving!r}: sign the {what} again with a key file of election {serving!r} "
                "(a rehearsal's documents are never valid on the real night)",
            )
        ],
    )
