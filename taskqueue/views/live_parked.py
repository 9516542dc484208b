"""The tasks a rate limit parked, for the live views: the depths of ``<queue>.wait.<N>s``
(docs/design/rate-limit.md), read beside the queue's own counts (by the dashboard's feed,
web/feed.py), and when a view shows them (as ``task_control.py status`` counts them:
control/commands.py ``parked``): the web page's Queue card and overview, the terminal's
line (live_screen.py), and /metrics's gauge (web/metrics.py) always, once read.

The tiers exist once a worker has seen a rate limit, and then for good. A queue never limited
has none, and each look at a missing tier costs a channel the broker closes with a 404: so
they are read every beat only while some exist or a limit is in force, and otherwise looked
for every ``PROBE_SECONDS``.
"""

from __future__ import annotations

import pika

from taskqueue.broker.config import QueueSpec
from taskqueue.broker.depths import Depth, Refused, looks

PROBE_SECONDS = 10.0  # no tier and no limit heard of: how often to look for tiers


class TierWatch:
    """The parked tasks' count, read when due (``read``): None before the first look, or
    while a tier is one the broker refuses to count (its tasks are there, only not known)."""

    def __init__(self, spec: QueueSpec) -> None:
        self.names = spec.wait_names
        self.parked: int | None = None
        self._found = False  # a tier existed at the last look
        self._next_probe = 0.0

    def read(self, connection: pika.BlockingConnection, now: float, limited: bool
             ) -> int | None:
        """The count now, if due (*limited*: the workers apply a limit), else the last."""
        if not (self._found or limited or now >= self._next_probe):
            return self.parked
        seen = looks(connection, self.names)
        self._found = any(answer is not None for answer in seen.values())
        self._next_probe = now + PROBE_SECONDS
        refused = any(isinstance(answer, Refused) for answer in seen.values())
        self.parked = None if refused else sum(  # no tier: 0
            answer.ready for answer in seen.values() if isinstance(answer, Depth))
        return self.parked


def parked_shown(parked: int | None, limited: bool) -> bool:
    """Whether a page shows the parked count: some are parked, or a limit is in force (then
    "0" says none waits for its turn; "?" that the count is not known)."""
    return bool(parked) or limited
