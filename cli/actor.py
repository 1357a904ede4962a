"""Who an operator's command acts as, in the admin logs: the operating-system user and the host."""

from __future__ import annotations

import getpass
import socket


def operator() -> str:
    """`cli:<user>@<host>`: what tally.admin_log and aggregate.admin_log record for a command run here."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"
