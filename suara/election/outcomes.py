"""What became of a submitted form, by the names suara stores and shows.

tally's tables and chain, a device's outbox and the reports name outcomes "ACCEPTED", "DUPLICATE"…;
the API's Outcome values carry their enum's prefix (OUTCOME_ACCEPTED). Each is mapped here by hand,
never derived from the enum's names, so renaming an API value cannot change a stored byte.
"""

from __future__ import annotations

from typing import Final, TypeAlias

from suara.v1 import tally_pb2

Outcome: TypeAlias = tally_pb2.Outcome.ValueType

OUTCOMES: Final[dict[str, Outcome]] = {
    "ACCEPTED": tally_pb2.OUTCOME_ACCEPTED,
    "QUARANTINED": tally_pb2.OUTCOME_QUARANTINED,
    "DUPLICATE": tally_pb2.OUTCOME_DUPLICATE,
    "SUPERSEDED": tally_pb2.OUTCOME_SUPERSEDED,
    "CONFLICT": tally_pb2.OUTCOME_CONFLICT,
    "REJECTED": tally_pb2.OUTCOME_REJECTED,
}
_NAMES: Final = {value: name for name, value in OUTCOMES.items()}


def outcome_name(value: int) -> str:
    """The stored name of an Outcome value from the wire; ValueError for one this code does not know."""
    try:
        return _NAMES[value]  # type: ignore[index]  # an int from the wire
    except KeyError:
        raise ValueError(f"unknown outcome {value}") from None
