"""The outbox's copies that found no queue: a copy to ``.retry``/``.dead``, or a group of results
records, the broker returned because its queue (or the results stream) was deleted. The queues
are declared again, then the copy is handed back to the outbox to send again, up to
``MAX_COPY_RETURNS`` times; only then is it refused (the consumer puts the original back, a
group's tasks go back to the queue). ``ReturnedCopies`` is given the outbox's way to send them
again (``send_again``); it never publishes itself."""

from __future__ import annotations

import logging
from collections.abc import Callable

from pika.connection import Connection

from taskqueue.broker.config import QueueSpec
from taskqueue.broker.topology import QueueSetup, Topology
from taskqueue.broker.urgent import urgent_retry_name
from taskqueue.worker.copies import Copy, RecordGroup

MAX_COPY_RETURNS = 3  # a copy returned this often (its queue keeps vanishing) is refused


class ReturnedCopies:
    def __init__(self, spec: QueueSpec, log: logging.Logger, worker: str,
                 send_again: Callable[[list[Copy | RecordGroup]], None]) -> None:
        self.spec, self.log, self.worker = spec, log, worker
        self.send_again = send_again
        self.waiting: list[Copy | RecordGroup] | None = None  # waiting for the queues

    def returned(self, copy: Copy | RecordGroup, connection: Connection | None) -> None:
        """Its queue (or the results stream) was deleted: make the queues again, then send it
        again (bounded)."""
        copy.returns, gone = copy.returns + 1, copy.routing_key
        if isinstance(copy, Copy) and gone == urgent_retry_name(self.spec.name):
            # Made on demand (lanes.py), not by QueueSetup: the retry waits in <queue>.retry
            # instead (back to <queue>, not urgent) rather than coming back here again.
            copy.routing_key = self.spec.retry_name
        if copy.returns > MAX_COPY_RETURNS or copy.cancelled:
            if isinstance(copy, RecordGroup):
                self.log.error("[%s] the broker would not take %d results records into %r: "
                               "their tasks go back to the queue", self.worker,
                               len(copy.items), copy.routing_key)
                copy.settle(False)
            else:
                copy.on_settled(False)
            return
        if self.waiting is not None:
            self.waiting.append(copy)
            return
        self.log.warning("[%s] queue %r is gone (the copy came back unroutable): declaring the "
                         "queues again and sending it again%s", self.worker, gone,
                         "" if gone == copy.routing_key else f" to {copy.routing_key!r}")
        self.waiting = [copy]
        if connection is None or not connection.is_open:
            self._after_remake(None)
            return
        QueueSetup(connection, self.spec, self.log, self._after_remake, self._after_remake,
                   quiet=True).start()

    def take_back(self) -> list[Copy | RecordGroup]:
        """The copies still waiting for the queues, now no longer (their setup died with the
        connection: the outbox sends them again on the next one)."""
        copies, self.waiting = self.waiting or [], None
        return copies

    def _after_remake(self, outcome: Topology | BaseException | None) -> None:
        copies, self.waiting = self.waiting or [], None
        if isinstance(outcome, BaseException):
            self.log.warning("[%s] could not declare the queues again (%s)", self.worker,
                             outcome)
        self.send_again(copies)
