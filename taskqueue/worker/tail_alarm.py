"""The tail during a resource alarm (tail.py): while the broker blocks publishing (a memory or
disk alarm) no mark can be written, and no record either, by anyone, so no fence can come back.
What waits for one is answered once the reading has caught up instead (nothing more came for
``BLOCKED_GRACE``), and a probe after ``BLOCKED_GRACE``: no mark coming back during an alarm is
not a sign of a partition."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

BLOCKED_GRACE = 1.0  # seconds of nothing new before answering while no fence can be written


class Where(NamedTuple):
    """Where the tail's reading is, as the alarm needs to know it."""
    generation: int  # a new one for each channel: what was scheduled for an older one is void
    attached: bool  # reading the stream
    read: int  # messages read so far, all readings


class PublishingAlarm:
    """The tail's side of an alarm. *loop*: the tail's I/O loop (None before it starts);
    *where*: where its reading is now; *answer_all*: answer every check, probe and first fence
    waiting for a fence, from what has been read."""

    def __init__(self, loop: Callable[[], Any], where: Callable[[], Where],
                 answer_all: Callable[[], None]) -> None:
        self._loop, self._where, self._answer_all = loop, where, answer_all
        self._since: float | None = None  # the broker blocks our publishing
        self._quiet_watch = False  # an answer once the reading caught up is due

    @property
    def blocked(self) -> bool:
        return self._since is not None

    def publishing_blocked(self) -> None:
        """No mark can be written until the alarm ends, and no record either, by anyone. What
        waits is answered once the reading has caught up (and the first fence is not waited
        for: the first record will show whether we may write)."""
        self._since = time.monotonic()
        self.answer_when_caught_up()

    def publishing_unblocked(self) -> None:
        self._since = None  # the marks asked for meanwhile go out now

    def answer_when_caught_up(self) -> None:
        """If blocked and reading: answer what waits once nothing new came for
        ``BLOCKED_GRACE``."""
        loop = self._loop()
        if loop is None or self._quiet_watch or self._since is None or not self._where().attached:
            return
        self._quiet_watch = True
        then = self._where()

        def answer_if_quiet() -> None:
            self._quiet_watch = False
            now = self._where()
            if now.generation != then.generation or not now.attached or self._since is None:
                return
            if now.read != then.read:
                self.answer_when_caught_up()  # still coming: not caught up yet
                return
            self._answer_all()

        loop.call_later(BLOCKED_GRACE, answer_if_quiet)

    def probe(self, on_back: Callable[[], None]) -> bool:
        """Blocked: call *on_back* after ``BLOCKED_GRACE`` (unless the reading changed
        meanwhile) instead of writing a mark; True if so."""
        loop = self._loop()
        if self._since is None or loop is None:
            return False
        generation = self._where().generation

        def back_if_same_reading() -> None:
            if generation == self._where().generation:
                on_back()

        loop.call_later(BLOCKED_GRACE, back_if_same_reading)
        return True
