"""The history page (issue 30, item 6): attempts finished per minute and the queue's depth over
the last hour, six hours or day, as a chart drawn on the server (views/chart.py).

  GET /history        the page (?window=1h, 6h or 24h), the chart in it; static/history.js
                      fetches it anew every 30 s (no inline script: the CSP stays as it is)
  GET /history.svg    the chart alone, the same window

Nothing is stored but the feed's own bounded aggregate (minutes.py in RecordTotals): the
attempts come from the results record, read from its start (or its retention's) whenever the
dashboard starts, so they survive a restart; the depth comes from the passive declares the
feed already makes each second, sampled every few seconds (board.DepthSampler), so it goes
back only to when the dashboard started (the page says so).
"""

from __future__ import annotations

import time
from typing import Any

from taskqueue.views.chart import history_svg
from taskqueue.web.door import Base
from taskqueue.web.feed import DashboardFeed

WINDOWS = {"1h": 60, "6h": 360, "24h": 1440}  # the page's choices: minutes shown


def window_of(handler: Base) -> str:
    asked = handler.get_query_argument("window", "1h")
    return asked if asked in WINDOWS else "1h"


def chart(feed: DashboardFeed, window: str, now: float) -> str:
    minutes = WINDOWS[window]
    with feed.lock:
        history = feed.totals.minutes
        counts = [(m.start, m.values) for m in history.counts.window(now, minutes)]
        depth = [(m.start, m.values) for m in history.depth.window(now, minutes)]
    return history_svg(counts, depth, f"queue {feed.spec.name}: the last {window}")


class HistoryPage(Base):
    def get(self) -> None:
        feed = self.board.feed
        window = window_of(self)
        with feed.lock:
            since = feed.totals.minutes.sampled_since
        self.page("history.html", title="history", window=window, windows=list(WINDOWS),
                  svg=chart(feed, window, time.time()),
                  sampled_since="-" if since is None else
                  time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)))


class HistorySvg(Base):
    def get(self) -> None:
        self.set_header("Content-Type", "image/svg+xml")
        self.finish(chart(self.board.feed, window_of(self), time.time()))


HISTORY_ROUTES: list[tuple[Any, ...]] = [(r"/history", HistoryPage),
                                         (r"/history\.svg", HistorySvg)]
