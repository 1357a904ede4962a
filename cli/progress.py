"""A plain progress line on stderr: redrawn in place on a terminal, one line per step otherwise."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total: int | None = None) -> None:
        self.label = label
        self.total = total
        self.started = time.monotonic()
        self._tty = sys.stderr.isatty()
        self._last = 0.0

    def update(self, done: int, total: int | None = None, note: str = "") -> None:
        total = total if total is not None else self.total
        now = time.monotonic()
        if self._tty and now - self._last < 0.1 and (total is None or done < total):
            return
        if not self._tty and now - self._last < 2.0 and (total is None or done < total):
            return
        self._last = now
        elapsed = now - self.started
        if total:
            width = 30
            filled = int(width * min(done, total) / total)
            bar = "█" * filled + "·" * (width - filled)
            text = f"{self.label} [{bar}] {done:,}/{total:,} {100 * done / total:5.1f}% {elapsed:6.1f}s {note}"
        else:
            text = f"{self.label} {done:,} {elapsed:6.1f}s {note}"
        if self._tty:
            sys.stderr.write("\r\033[K" + text)
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def done(self, message: str = "") -> None:
        if self._tty:
            sys.stderr.write("\r\033[K")
        if message:
            sys.stderr.write(f"{self.label}: {message}\n")
        sys.stderr.flush()
