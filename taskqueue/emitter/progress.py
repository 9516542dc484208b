"""Emitter progress: a live bar on a terminal, a plain line every few seconds elsewhere.

Nothing here writes control characters unless the stream is a terminal, so logs and CI output
stay clean."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from taskqueue.emitter.stats import PublishStats


class Progress:
    """Call ``update(stats)`` often; it decides when to draw. ``total`` is the number of rows
    when known (a regular file), which enables the percentage and the ETA."""

    def __init__(self, log: logging.Logger, total: int | None = None,
                 stream: TextIO | None = None, interval: float = 5.0) -> None:
        self.log = log
        self.total = total
        self.stream = stream or sys.stderr
        self.is_terminal = self.stream.isatty()
        self.interval = 0.2 if self.is_terminal else interval
        self._last_draw = time.monotonic()

    def update(self, stats: PublishStats, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < self.interval:
            return
        self._last_draw = now
        if self.is_terminal:
            self.stream.write("\r" + self.bar(stats) + "\x1b[K")
            self.stream.flush()
        else:
            self.log.info("progress: %s", self.line(stats))

    def done(self) -> None:
        if self.is_terminal:
            self.stream.write("\n")
            self.stream.flush()

    def line(self, stats: PublishStats) -> str:
        text = f"{stats.read:,} read, {stats.confirmed:,} confirmed"
        if stats.rejected:
            text += f", {stats.rejected:,} rejected"
        text += f", {stats.rate:,.0f} msg/s"
        if self.total:
            text += f", {100 * stats.confirmed / self.total:.0f}% of {self.total:,}"
            eta = self._eta(stats)
            if eta is not None:
                text += f", ETA {eta:.0f} s"
        return text

    def bar(self, stats: PublishStats, width: int = 30) -> str:
        if not self.total:
            return "publishing: " + self.line(stats)
        filled = int(width * min(1.0, stats.confirmed / self.total))
        return f"[{'#' * filled}{'.' * (width - filled)}] " + self.line(stats)

    def _eta(self, stats: PublishStats) -> float | None:
        if not self.total or stats.rate <= 0:
            return None
        return max(0.0, (self.total - stats.confirmed) / stats.rate)


def count_rows(path: str) -> int | None:
    """Non-blank lines of a regular file, counted fast in binary (for the ETA); None for stdin."""
    if path == "-":
        return None
    try:
        with open(path, "rb") as handle:
            return sum(1 for line in handle if line.strip())
    except OSError:
        return None
