"""tally's own refusals: the messages of its malformed forms and requests. Every status is the library's
(suara.runtime.errors); what is specific here is only how tally words them."""

from __future__ import annotations

from suara.runtime.errors import FieldProblem, InvalidArgument


class InvalidForm(InvalidArgument):
    """Malformed: nothing is stored. Every bad field is named."""

    def __init__(self, violations: list[FieldProblem]) -> None:
        names = ", ".join(v.field for v in violations)
        super().__init__(f"the form is malformed ({names}); fix these fields and submit again", violations=violations)


class InvalidRequest(InvalidArgument):
    """A bad admin request (not a form): nothing is stored. Every bad field is named."""

    def __init__(self, violations: list[FieldProblem]) -> None:
        names = ", ".join(v.field for v in violations)
        super().__init__(f"the request is invalid ({names}); fix these fields and call again", violations=violations)
