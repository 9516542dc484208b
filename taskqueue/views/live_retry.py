"""The tasks waiting to be retried, for the live views' "retrying" count (watch.py, the
dashboard's feed web/feed.py, and so /metrics): ``<queue>.retry`` and ``<queue>.urgent.retry``
(broker/urgent.py: a failed urgent task's retry waits there).

``<queue>.urgent.retry`` exists once a worker has consumed ``<queue>.urgent`` (worker/lanes.py
``Intake.prepare``), and then for good. Before that it counts 0; and as each look at a missing
queue costs a channel the broker closes with a 404, it is looked for every ``PROBE_SECONDS``
only, as the rate limit's tiers are (live_parked.py), and read every beat once found.
"""

from __future__ import annotations

import pika

from taskqueue.broker.config import QueueSpec
from taskqueue.broker.depths import Depth, look
from taskqueue.broker.urgent import urgent_retry_name
from taskqueue.views.live_parked import PROBE_SECONDS


class UrgentRetryWatch:
    """``<queue>.urgent.retry``'s ready tasks, read when due (``read``): 0 while it does not
    exist; None while the broker refuses to count it (its tasks are there, only not known)."""

    def __init__(self, spec: QueueSpec) -> None:
        self.name = urgent_retry_name(spec.name)
        self.waiting: int | None = 0
        self._found = False  # it existed (or was refused) at the last look
        self._next_probe = 0.0

    def read(self, connection: pika.BlockingConnection, now: float) -> int | None:
        """The count now, if due (it was there at the last look, or a probe is due); else
        the last."""
        if not (self._found or now >= self._next_probe):
            return self.waiting
        seen = look(connection, self.name)
        self._found = seen is not None
        self._next_probe = now + PROBE_SECONDS
        self.waiting = seen.ready if isinstance(seen, Depth) else (0 if seen is None else None)
        return self.waiting


def retrying(retry: tuple[int, int] | None, urgent_retry: int | None) -> int | None:
    """The "retrying" count: ``<queue>.retry``'s ready tasks (*retry*: passive_counts's answer)
    and ``<queue>.urgent.retry``'s; None (unknown) if either is not known."""
    if retry is None or urgent_retry is None:
        return None
    return retry[0] + urgent_retry
