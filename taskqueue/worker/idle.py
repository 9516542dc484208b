"""``--exit-when-idle``: when a worker has had nothing to do for long enough, it stops.

Idle means connected, consuming, every slot free, no task came, none is due back from
``<queue>.retry`` or a rate limit's tier (one this worker parked, rate_wait.py), and nothing
of ours waits for the broker (a copy or a record unconfirmed: that task is still ours). Time
spent disconnected does not count, nor does a path gone silent, nor a node cut off from the
cluster's majority (a partition: it delivers nothing, and a passive declare there answers from
a stale view): before exiting, a probe must come back (reach.py: the node serves), then round
trips must say the queue and ``<queue>.urgent`` are empty.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from taskqueue.broker.urgent import urgent_name


class Waiting(Protocol):
    """What of ours still waits for the broker (the outbox's counts)."""

    @property
    def copies_waiting(self) -> int: ...
    @property
    def records_waiting(self) -> int: ...


class Prover(Protocol):
    def prove(self, on_proven: Callable[[], None]) -> None: ...


class Named(Protocol):
    @property
    def name(self) -> str: ...


class Worker(Protocol):
    """What the watch needs of the consumer."""

    @property
    def log(self) -> logging.Logger: ...
    @property
    def outbox(self) -> Waiting: ...
    @property
    def reach(self) -> Prover: ...
    @property
    def options(self) -> Named: ...
    @property
    def queue(self) -> Named: ...

    def inspect_queue(self, name: str,
                      on_result: Callable[[int | None, int | None], None]) -> None: ...
    def request_stop(self) -> None: ...


class IdleWatch:
    """Says when to stop; the consumer tells it what happens (``consuming``, ``busy``,
    ``all_free``, ``stop``, ``retry_due``) and calls ``check`` on its beat."""

    def __init__(self, worker: Worker, limit: float | None) -> None:
        self.worker, self.limit = worker, limit
        self._since: float | None = None  # consuming with every slot free, since when
        self._probe: object | None = None  # a round trip asked before exiting
        self._retry_due = 0.0  # when the last task sent to .retry (or parked) flows back
        self.urgent = True  # <queue>.urgent is consumed (False: no permission on it)

    def consuming(self) -> None:
        self._since = time.monotonic()

    def all_free(self) -> None:
        self._since = time.monotonic()

    def busy(self) -> None:
        self._since = None
        self._probe = None  # a task came: what was asked is answered

    def stop(self) -> None:
        """Not consuming (paused, stopping, disconnected): not idle either."""
        self._since = None
        self._probe = None

    def retry_due(self, delay: float) -> None:
        """A task of ours comes back in *delay* s (a retry, or a park): not idle before.
        (The latest counts: a task parked an hour stays due after one parked a second.)"""
        self._retry_due = max(self._retry_due, time.monotonic() + delay)

    def check(self, now: float) -> None:
        if self.limit is None or self._since is None or self._probe is not None:
            return
        outbox = self.worker.outbox
        if outbox.copies_waiting or outbox.records_waiting:
            return
        if now - max(self._since, self._retry_due) < self.limit:
            return
        probe = self._probe = object()
        worker = self.worker

        def answered(depth: int | None, then: str | None) -> None:
            if self._probe is not probe:
                return  # asked on a connection since lost
            if depth == 0 and then is not None:
                worker.inspect_queue(then, lambda more, _consumers: answered(more, None))
                return
            self._probe = None
            if depth == 0 and self._since is not None:
                worker.log.info("[%s] no task for %.1f s: exiting (--exit-when-idle)",
                                worker.options.name, time.monotonic() - self._since)
                worker.request_stop()
            elif depth:
                self._since = time.monotonic()  # tasks wait: they are on their way

        def served() -> None:
            if self._probe is probe:  # (a task came, or the connection was lost, meanwhile)
                urgent = urgent_name(worker.queue.name) if self.urgent else None
                worker.inspect_queue(worker.queue.name,
                                     lambda depth, _consumers: answered(depth, urgent))

        # First the node must prove it serves (else reach.py moves us to the next URL and
        # ``stop`` clears this probe), then the queue's depth, asked there, counts.
        worker.reach.prove(served)
