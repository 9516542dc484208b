"""The live view: what it knows (``LiveTally``, live_tally.py) and how it looks (live_screen.py)
in one object, ``LiveState``: events in, a screen (or one plain line) out. ``screen()`` draws
the terminal view, ``line()`` the one-line form for logs and pipes.
"""

from __future__ import annotations

import time

from taskqueue.views.live_screen import draw, one_line
from taskqueue.views.live_tally import LiveTally
from taskqueue.views.live_tally import QueueCounts as QueueCounts  # the views' own imports
from taskqueue.views.live_tally import SlotView as SlotView


class LiveState(LiveTally):
    """A ``LiveTally`` that draws itself."""

    def screen(self, now: float | None = None, width: int = 100,
               height: int | None = None) -> list[str]:
        """The terminal view, fitted to *width* x *height* (no height: every slot)."""
        return draw(self, time.time() if now is None else now, width, height)

    def line(self, now: float | None = None) -> str:
        """One plain line: for logs, pipes and CI (no escape codes)."""
        return one_line(self, time.time() if now is None else now)
