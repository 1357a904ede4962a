"""aggregate's own refusal: how it words a malformed request. Every status is the library's
(suara.runtime.errors)."""

from __future__ import annotations

from suara.runtime.errors import FieldProblem, InvalidArgument


class InvalidRequest(InvalidArgument):
    """Malformed request (for Apply*: nothing of the batch is written). Every bad field is named."""

    def __init__(self, violations: list[FieldProblem]) -> None:
        names = ", ".join(v.field for v in violations[:10]) + (", …" if len(violations) > 10 else "")
        super().__init__(f"the request is malformed ({names}); nothing of it was applied", violations=violations)
