"""One queue's share of the dashboard (issue 30, item 6): its broker reader, its pulse, its
run pages, its buttons and its numbers, and the address its pages are under.

``task_report.py --serve --queue jobs --queue mail`` makes one ``Board`` per queue: one broker
connection (feed.py) and one snapshot a second (hub.py) per queue, whatever the tabs. With one
queue its pages are at the root (``/``, as they always were); with several, each queue's are
under ``/q/<name>/`` (the name percent-encoded: it is data) and ``/`` is the overview of all of
them (``overview_row``).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from prometheus_client.registry import CollectorRegistry
from tornado.ioloop import PeriodicCallback

from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.views.live_parked import parked_shown
from taskqueue.web.actions import ControlDesk
from taskqueue.web.copies import RunCopies
from taskqueue.web.feed import DashboardFeed
from taskqueue.web.hub import Hub, feed_problem
from taskqueue.web.metrics import registry_of
from taskqueue.web.runs import RunPages
from taskqueue.web.snapshot import workers_of

SAMPLE_SECONDS = 5.0  # how often the depth is sampled (the last sample of a minute is kept)
CONTROL_THREADS = 2  # a queue's buttons done at once (a requeue of many dead tasks is long)


class DepthSampler:
    """Puts the feed's queue counts into the minutes' depth ring, while the broker answers."""

    def __init__(self, feed: DashboardFeed) -> None:
        self.feed = feed
        self._timer = PeriodicCallback(self.sample, SAMPLE_SECONDS * 1000)

    def start(self) -> None:
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    def sample(self) -> None:
        now = time.time()
        with self.feed.lock:
            heard = self.feed.heard_at
            if heard is None or now - heard > 3 * self.feed.interval:
                return  # the broker is not answering: a gap, not the old figures again
            counts = self.feed.state.counts
            self.feed.totals.minutes.sample(now, counts.ready, counts.retry, counts.dead)


@dataclass
class Board:
    feed: DashboardFeed
    hub: Hub
    runs: RunPages
    desk: ControlDesk
    registry: CollectorRegistry
    sampler: DepthSampler
    root: str  # where its pages are: the prefix, or <prefix>q/<name>/
    # Its buttons' threads, its own: a long requeue on one queue never holds up a Pause on
    # another (nor a slow page read: those have the server's threads).
    controls: ThreadPoolExecutor

    @property
    def name(self) -> str:
        return self.feed.spec.name

    def start(self) -> None:
        self.feed.start()
        self.hub.start()
        self.sampler.start()

    def stop(self) -> None:
        self.sampler.stop()
        self.hub.stop()
        self.feed.stop()
        self.stop_threads()

    def stop_threads(self) -> None:
        """No more buttons (one being done goes on to its end)."""
        self.controls.shutdown(wait=False)


def queue_root(prefix: str, name: str) -> str:
    """Where a queue's pages are when several are served: every character but letters,
    digits and ``-._~`` percent-encoded (``/``, ``?``, ``#``, ``%`` and spaces too)."""
    return f"{prefix}q/{quote(name, safe='')}/"


def make_board(settings: BrokerSettings, spec: QueueSpec, *, reports_dir: Path,
               interval: float, log: logging.Logger, root: str) -> Board:
    """A queue's board, not started (call it on the server's running loop: the hub's and the
    sampler's timers are the loop's)."""
    copies = RunCopies(reports_dir, spec.name)
    feed = DashboardFeed(settings, spec, log, copies, interval)
    hub = Hub(feed, interval)
    return Board(feed=feed, hub=hub,
                 runs=RunPages(copies, spec.name, feed.seen, feed.latest_run),
                 desk=ControlDesk(settings, spec, log),
                 registry=registry_of(feed, lambda: hub.pages), sampler=DepthSampler(feed),
                 root=root, controls=ThreadPoolExecutor(CONTROL_THREADS,
                                                        thread_name_prefix="control"))


def overview_row(board: Board, now: float) -> dict:
    """A queue's line on the overview: its depths (the tasks a rate limit parked too, and
    whether to show them: views/live_parked.py), its workers, the attempts done and failed
    in the last 60 s, and whether these figures are current (``problem``: why not, and
    ``as_of``: when they were). While the broker does not answer, all of it is as of the last
    moment it did (as the live page's, hub.py): not workers "gone" one by one as if dead."""
    feed = board.feed
    problem = feed_problem(feed)
    with feed.lock:
        at = now if problem is None else (feed.heard_at or now)
        state = feed.state
        counts = state.counts
        kinds = [kind for kind, _ in workers_of(state, at).values()]
        last_minute = feed.totals.minutes.last_minute(at)
        paused = state.paused(at)
        parked, limited = state.parked, bool(state.rate_line(at))
    return {"name": board.name, "root": board.root, "ready": counts.ready,
            "retrying": counts.retry, "dead": counts.dead, "paused": paused,
            "parked": parked, "parked_shown": parked_shown(parked, limited),
            "workers": sum(1 for kind in kinds if kind not in ("gone", "stopped")),
            "busy": kinds.count("busy"),
            "done_per_minute": last_minute["done"],
            "failed_per_minute": last_minute["failed"] + last_minute["dead"],
            "problem": problem, "as_of": at}


def overview(boards: list[Board]) -> dict:
    now = time.time()
    return {"updated": now, "queues": [overview_row(board, now) for board in boards]}
