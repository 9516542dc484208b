"""How the tail's reading of the results stream fares, told in few lines (tail.py): a stream
that cannot be read (once, then every ``SAY_AGAIN_SECONDS`` while the same reason lasts), a
reading that keeps the checks waiting (its progress, now and then), and a reading that has
stalled (neither our mark nor any message for ``FENCE_TIMEOUT``)."""

from __future__ import annotations

import logging
import time

FENCE_TIMEOUT = 15.0  # seconds for a mark to come back before reading the stream again
SAY_AGAIN_SECONDS = 10.0  # a reason that lasts is said again this often


class ReadingHealth:
    def __init__(self, log: logging.Logger, worker: str, stream: str) -> None:
        self.log, self.worker, self.stream = log, worker, stream
        self._unreadable: tuple[str, float, float, int] | None = None  # why, since, said, tries
        self._fence_watch: tuple[tuple[int, int], float] | None = None  # (progress, since)
        self._catch_up: tuple[float, int, float] | None = None  # (since, read then, said at)

    def unreadable(self, why: str) -> None:
        """One line, then one every ``SAY_AGAIN_SECONDS`` while the same reason lasts (a
        stream electing a new leader refuses every second for up to a minute)."""
        now = time.monotonic()
        last = self._unreadable
        if last is None or last[0] != why:
            self._unreadable = (why, now, now, 1)
            self.log.warning("[%s] the results stream %r cannot be read (%s): reading it again "
                             "shortly", self.worker, self.stream, why)
            return
        _why, since, said_at, refusals = last
        if now - said_at >= SAY_AGAIN_SECONDS:
            self.log.warning("[%s] the results stream %r still cannot be read (%s; %d tries in "
                             "%.0f s): reading it again shortly", self.worker, self.stream, why,
                             refusals + 1, now - since)
            said_at = now
        self._unreadable = (why, since, said_at, refusals + 1)

    def readable(self) -> None:
        if self._unreadable is not None and self._unreadable[3] > 1:
            _why, since, _said, refusals = self._unreadable
            self.log.info("[%s] the results stream %r is readable again (after %d tries in "
                          "%.0f s)", self.worker, self.stream, refusals,
                          time.monotonic() - since)
        self._unreadable = None

    def stalled(self, now: float, waiting: bool, progress: tuple[int, int],
                position: int) -> bool:
        """On the worker's beat, while a fence is *waiting*: True once *progress* (our marks
        seen, messages read) has not moved for ``FENCE_TIMEOUT``. A reading still catching up
        (a long stream, a busy node) is not stalled: starting it over would never let it end
        (found by make chaos, seed 148826: every worker re-read the stream every 15 s)."""
        if not waiting:
            self._fence_watch = self._catch_up = None
            return False
        if self._fence_watch is None or self._fence_watch[0] != progress:
            self._fence_watch = (progress, now)  # marks or records still come: not stalled
            self._say_catching_up(now, progress[1], position)
            return False
        if now - self._fence_watch[1] >= FENCE_TIMEOUT:
            self._fence_watch = None
            return True
        return False

    def _say_catching_up(self, now: float, read: int, position: int) -> None:
        """Long work shows progress: a reading that has kept the worker waiting for
        ``FENCE_TIMEOUT`` says how far it is, then every ``SAY_AGAIN_SECONDS``."""
        if self._catch_up is None:
            self._catch_up = (now, read, now)
            return
        since, read_then, said_at = self._catch_up
        if now - since >= FENCE_TIMEOUT and now - said_at >= SAY_AGAIN_SECONDS:
            self.log.info("[%s] still reading the results stream %r to catch up: %d messages "
                          "in %.0f s, at offset %d; the checks of tasks wait for it", self.worker,
                          self.stream, read - read_then, now - since, position)
            self._catch_up = (since, read_then, now)
