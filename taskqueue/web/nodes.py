"""On a cluster, is the node the dashboard reads from behind the others?

A node cut off from its cluster by a partition (RabbitMQ 3.x with ``cluster_partition_handling
= ignore``, 4.x whatever the setting) keeps our connection open and says nothing is wrong: its
replica of the results stream just stops where the cut began (3.x) or does not answer (4.3),
and the workers' snapshots (published on the other nodes) stop coming.
The dashboard would show a run frozen in time. Given several ``--url``, ``NodeWatch`` asks each
node every ``CHECK_SECONDS``, in a thread of its own (a node that does not answer must not
stall the page), where its replica of the stream ends. When another node's ends past what the
feed has read while the feed has read nothing new for ``CHECK_SECONDS``, the feed is told to
read there instead (``advice``); ``move_to`` is that decision, pure. A node that catches up
is not behind: records still coming in keep the feed where it is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from taskqueue.broker.config import BrokerSettings, QueueSpec, mask_url
from taskqueue.results.reader import ends_by_url

# A check is a short read of each node's last chunk, all at once (a silent node is given up
# after END_PROBE_TIMEOUT). The page moves at the first check that finds the feed has read
# nothing for CHECK_SECONDS while another node has more: within 30 s of a cut, as every client
# of ours (README.md); checks every 15 s, two of them without progress, took 30-40 s.
CHECK_SECONDS = 5.0
SAMPLE_SECONDS = 1.0  # how often what the feed has read is looked at


def move_to(ends: dict[str, int | None], current: str, read_to: int,
            progressed: bool) -> str | None:
    """The URL to read from instead of *current*, or None to stay. *ends*: the offset of the
    stream's last message at each URL (None: empty, missing or unreachable); *read_to*: the
    offset the feed reads next; *progressed*: it read something lately. A node whose end
    cannot be read is left for one that has everything the feed read."""
    if progressed:
        return None
    others = [(end, url) for url, end in ends.items() if url != current and end is not None]
    if not others:
        return None
    end, best = max(others)
    here = ends.get(current)
    if here is None:  # ours cannot be read (a cut-off 4.3 node never answers): one that has
        return best if end >= read_to - 1 else None  # all the feed read will do
    if end < read_to or here >= end:
        return None
    return best


class NodeWatch:
    """Checks the nodes of *settings* until ``stop()``; the feed says which URL it reads from
    (``watching``) and asks ``advice(url)``: the URL to move to and why, once, or None.
    *read_to()* is the feed's next offset. With one URL there is nothing to compare: no
    thread, no advice."""

    def __init__(self, settings: BrokerSettings, spec: QueueSpec, log: logging.Logger,
                 read_to: Callable[[], int], interval: float = CHECK_SECONDS) -> None:
        self.settings, self.spec, self.log = settings, spec, log
        self.read_to, self.interval = read_to, interval
        self._current = settings.urls[0]
        self._advice: tuple[str, str, str] | None = None  # (from, to, why)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-nodes", daemon=True)

    def start(self) -> None:
        if len(self.settings.urls) > 1:
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def watching(self, url: str) -> None:
        """The feed reads from *url* now (advice about another is stale)."""
        with self._lock:
            self._current = url

    def advice(self, current: str) -> tuple[str, str] | None:
        """(the URL to read from instead of *current*, why), once; None: stay."""
        with self._lock:
            advice, self._advice = self._advice, None
        return advice[1:] if advice is not None and advice[0] == current else None

    def _run(self) -> None:
        # What the feed has read is looked at every second: a check that takes seconds (a
        # silent node, END_PROBE_TIMEOUT) still knows whether the feed read anything lately.
        last_read, quiet_since = self.read_to(), time.monotonic()
        next_check = quiet_since + self.interval
        while not self._stopping.wait(SAMPLE_SECONDS):
            read_to, now = self.read_to(), time.monotonic()
            if read_to != last_read:
                last_read, quiet_since = read_to, now
            if now < next_check:
                continue
            try:
                self._check(quiet_since)
            except Exception:  # a bug here must not end the checks silently
                self.log.exception("dashboard: could not compare the nodes' results streams")
            next_check = time.monotonic() + self.interval

    def _check(self, quiet_since: float) -> None:
        """One round: advice if the node read from is behind. The feed progressed if it read
        anything during the round (which may take END_PROBE_TIMEOUT) or in the ``interval``
        before its end."""
        read_to = self.read_to()
        with self._lock:
            current = self._current
        ends = ends_by_url(self.settings, self.spec)
        progressed = (self.read_to() != read_to
                      or time.monotonic() - quiet_since < self.interval)
        target = move_to(ends, current, read_to, progressed)
        if target is not None:
            here = "could not be read" if ends[current] is None else \
                f"ends at offset {ends[current]}"
            why = (f"the results stream at {mask_url(current)} {here}, at "
                   f"{mask_url(target)} it ends at {ends[target]}: the first is behind "
                   "(cut off from its cluster?)")
            with self._lock:
                self._advice = (current, target, why)
