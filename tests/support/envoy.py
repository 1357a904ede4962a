"""Envoy's own view of its tally backends, read from its admin interface."""

from __future__ import annotations

import urllib.request


def envoy_health(admin_url: str) -> dict[str, str]:
    """Envoy's view of each tally endpoint: HOST:PORT -> its health flags ("healthy" when in rotation)."""
    with urllib.request.urlopen(f"{admin_url}/clusters", timeout=2) as reply:
        text = reply.read().decode()
    flags = {}
    for line in text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == "tally" and parts[2] == "health_flags":
            flags[parts[1]] = parts[3]
    return flags
