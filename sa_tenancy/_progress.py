"""The CLI's progress display: one rewritten line on a terminal, sparse plain lines otherwise."""

from __future__ import annotations

import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def describe(done: int, total: int, failed: int, elapsed: float) -> str:
    """``done/total tenants, F failed, R/s, ETA``: the same text on a terminal and in a log."""
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = _duration((total - done) / rate) if rate > 0 and done < total else "-"
    return f"{done}/{total} tenants, {failed} failed, {rate:.1f}/s, ETA {eta}"


class ProgressLine:
    """Callable progress sink for :func:`sa_tenancy.migrate.migrate_tenants`.

    On a TTY the line is redrawn in place (``\\r``); otherwise a plain line is written at most
    every ``interval`` seconds and at the end, so logs stay readable.
    """

    def __init__(self, stream: TextIO, *, tty: bool, label: str, interval: float = 2.0) -> None:
        self.stream = stream
        self.tty = tty
        self.label = label
        self.interval = interval
        self._last = 0.0
        self._width = 0
        self._shown = False

    def __call__(self, done: int, total: int, failed: int, elapsed: float) -> None:
        line = f"{self.label}: {describe(done, total, failed, elapsed)}"
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + line.ljust(self._width))
            self._width = max(self._width, len(line))
            self._shown = True
            self.stream.flush()
        elif done >= total or now - self._last >= self.interval:
            self.stream.write(line + "\n")
            self.stream.flush()
            self._last = now

    def close(self) -> None:
        if self.tty and self._shown:
            self.stream.write("\n")
            self.stream.flush()
