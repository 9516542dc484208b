"""The live page's pulse: once per interval the feed's state becomes one JSON text, and every
open page (Server-Sent Events, app.py) is sent that same text. The rate is the server's: ten
tabs cost one snapshot a second, and the broker nothing more (one reader, feed.py). A browser
opens one stream however many of its tabs show the live page (static/stream-worker.js).

While the broker does not answer, the snapshot is the state as of the last moment it did
(``feed.heard_at``): figures, workers and rate as they were then, with the time they were
true, rather than workers turning "gone" one by one as if they had died; the page greys
them and says why (``broker`` in the snapshot).
"""

from __future__ import annotations

import json
import time

from tornado.ioloop import PeriodicCallback
from tornado.locks import Condition

from taskqueue.web.feed import DashboardFeed
from taskqueue.web.snapshot import live_json

MAX_PAGES = 100  # live pages open at once; more are refused (503), not queued


class Hub:
    """``after(version)`` waits for the snapshot after *version*; ``latest()`` is the current."""

    def __init__(self, feed: DashboardFeed, interval: float = 1.0) -> None:
        self.feed, self.interval = feed, interval
        self.version, self._text = 0, "{}"
        self.pages = 0
        self.most_pages = 0
        self._changed = Condition()
        self._timer = PeriodicCallback(self.refresh, interval * 1000)

    def start(self) -> None:
        self.refresh()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    def refresh(self) -> None:
        problem = feed_problem(self.feed)
        now = time.time()
        as_of = now if problem is None else (self.feed.heard_at or now)
        with self.feed.lock:
            snapshot = live_json(self.feed.state, as_of, problem)
        self._text = json.dumps(snapshot, ensure_ascii=False)
        self.version += 1
        self._changed.notify_all()

    def latest(self) -> tuple[int, str]:
        return self.version, self._text

    async def after(self, version: int) -> tuple[int, str]:
        while self.version == version:
            await self._changed.wait()
        return self.version, self._text

    def join(self) -> bool:
        if self.pages >= MAX_PAGES:
            return False
        self.pages += 1
        self.most_pages = max(self.most_pages, self.pages)
        return True

    def leave(self) -> None:
        self.pages -= 1


def feed_problem(feed: DashboardFeed) -> str | None:
    """Why the figures of *feed* are not current (None: they are)."""
    if not feed.alive:
        return "the dashboard's broker reader stopped (see its log); restart the dashboard"
    return feed.problem
