"""The one error a run ends with when it cannot start or go on."""


class LoadTestError(Exception):
    """The run cannot start or go on (no site, a non-empty election, a bad admin key…)."""
