"""The worker's rate gate: what a shared rate limit needs of this worker (issue 31 item 1;
docs/design/rate-limit.md).

``RateGate`` is told the limit in force (``apply``, from the control stream's ``rate-limit``
commands, replayed at start: the last one wins) and which connections are up. From the first
``rate-limit`` command it sees (even ``off``), it makes sure the rate queues exist
(``<queue>.ratelimit`` and the wait tiers, broker/topology.py ``declare_rate_queues``) and keeps
its Permits channel open on the publishing connection (permits.py). While a limit is in force it
also consumes ``<queue>.ratelimit`` as a possible arbiter (arbiter.py), as long as it can send
answers (its Permits channel is open); the limit off, it stops consuming (the queues stay).
A delivery's life (life.py) asks it for turns: ``ask``, ``limit``, ``on_change``.
Everything runs on the worker's I/O thread; nothing raises out of a pika callback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pika.adapters.select_connection import IOLoop
from pika.connection import Connection

from taskqueue.broker.config import QueueSpec
from taskqueue.broker.on_demand import declare_rate_queues
from taskqueue.broker.topology import Topology
from taskqueue.control.ratelimit import Answer, RateLimit
from taskqueue.worker.arbiter import Arbiter
from taskqueue.worker.guard import guarded
from taskqueue.worker.permits import Permits

RETRY_SECONDS = 5.0  # the rate queues could not be declared or consumed: try again after this
LOUD_EVERY = 12  # a failure that persists is said once a minute, not every retry


class RateGate:
    """The rate limit on this worker: asks for turns (permits.py), the arbiter role
    (arbiter.py), the rate queues. See the module docstring."""

    def __init__(self, spec: QueueSpec, log: logging.Logger, worker: str, ioloop: IOLoop,
                 blocked: Callable[[], bool] = lambda: False) -> None:
        self.spec, self.log, self.worker, self.ioloop = spec, log, worker, ioloop
        self.permits = Permits(spec, log, worker, ioloop, blocked)
        self.arbiter = Arbiter(spec, log, worker, self.permits.reply)
        self.permits.on_open = self.permits.on_lost = self._sync
        self.arbiter.on_gone = self._on_arbiter_gone
        self._limit: RateLimit | None = None
        self._seen = False  # a rate-limit command was seen: the rate queues are needed
        self._callbacks: list[Callable[[RateLimit | None], None]] = []
        self._consuming: Connection | None = None  # the consuming connection, set up
        self._topology = Topology()
        self._publishing: Connection | None = None
        self._declared: Connection | None = None  # the rate queues are there (seen on it)
        self._declaring = False
        self._failures = 0  # declares failed in a row: while any, no limit applies here
        self._retry: object = None
        self._closed = False

    # --- what a delivery's life uses ----------------------------------------------------------
    def limit(self) -> RateLimit | None:
        """The limit in force now on this worker (None: none). None too while its queues
        cannot be declared: an ask would go to a queue that is not there, unanswered, so
        tasks start unlimited (as the warning then says) until a declare succeeds."""
        return None if self._failures else self._limit

    def ask(self, key: str, returner: bool, on_answer: Callable[[Answer], None]
            ) -> Callable[[], None]:
        """Ask the arbiter for a turn for *key* (``""``: the global limit's one key; a
        *returner* was parked or held before). *on_answer(answer)* is called once, with the
        first answer, on the I/O thread; unanswered for ASK_TIMEOUT, it asks again itself.
        Returns the wait's cancel: after it, *on_answer* is never called."""
        return self.permits.ask(key, returner, on_answer)

    def on_change(self, callback: Callable[[RateLimit | None], None]) -> None:
        """*callback(limit)* whenever the limit is set, changed (rate or per-key) or off."""
        self._callbacks.append(callback)

    def snapshot(self) -> dict:
        """For the worker's live snapshot: {} while no limit is in force."""
        limit = self.limit()
        if limit is None:
            return {}
        return {"limit": limit.text, "per_key": limit.per_key, "arbiter": self.arbiter.active,
                "busiest": [[key, left] for key, left in self.arbiter.busiest()]}

    # --- what the consumer tells it ---------------------------------------------------------
    def apply(self, limit: RateLimit | None) -> None:
        """A ``rate-limit`` command (``ControlState.rate_limit``: the last one wins)."""
        old, before = self._limit, self.limit()
        self._limit, self._seen = limit, True
        if _differs(old, limit):
            if limit is None:
                self.log.info("[%s] rate limit off: tasks start as slots free", self.worker)
            else:
                self.log.info("[%s] rate limit %s in force: each start waits for its turn",
                              self.worker, limit.describe())
                self.arbiter.set_rate(limit.per_second)
        self._tell(before)
        self._sync()

    def _tell(self, before: RateLimit | None) -> None:
        """The limit in force here changed from *before* (a command, or the rate queues
        declared or not): tell the delivery lives."""
        limit = self.limit()
        if not _differs(before, limit):
            return
        for callback in self._callbacks:  # a slot's code: the others are told all the same
            guarded(self.log, f"[{self.worker}] rate limit: acting on the change failed",
                    callback)(limit)

    def consuming_ready(self, connection: Connection, topology: Topology) -> None:
        """The consuming connection's queues are set up (consumer.py ``_on_set_up``)."""
        self._consuming, self._topology, self._declared = connection, topology, None
        self._declaring = False  # (one begun on a connection lost meanwhile may never end)
        self._sync()

    def consuming_lost(self) -> None:
        self._consuming = None
        self.arbiter.lost()

    def publishing_ready(self, connection: Connection) -> None:
        """The publishing connection (the outbox's) is up, first or again."""
        self._publishing = connection
        self._sync()

    def close(self) -> None:
        """The worker stops: leave the arbiter role now (the next worker takes over), ask
        nothing more."""
        self._closed = True
        self.arbiter.stop()
        self.permits.close()

    # --- keeping the broker's side in line -----------------------------------------------------
    def _sync(self) -> None:
        self._safe(self._bring_in_line)()  # called from pika's callbacks and the consumer's

    def _bring_in_line(self) -> None:
        """Open, declare, consume or stop whatever the limit and the connections call for."""
        if self._closed or not self._seen:
            return
        if self._publishing is not None:
            self.permits.open(self._publishing)  # (nothing if open or opening on it)
        connection = self._consuming
        if connection is None or not connection.is_open:
            return
        if self._declared is not connection:
            self._declare(connection)
            return
        limit = self._limit
        if limit is not None and self.permits.ready:
            self.arbiter.start(connection, limit.per_second)  # (nothing if consuming)
        elif self.arbiter.consuming:
            self.arbiter.stop()

    def _declare(self, connection: Connection) -> None:
        if self._declaring or self._retry is not None:
            return
        self._declaring = True

        def done(created: list[str]) -> None:
            before = self.limit()
            self._declaring, self._failures = False, 0
            if created:
                self.log.info("[%s] rate limit: created %s", self.worker, ", ".join(created))
            self._declared = connection
            self._tell(before)
            self._sync()

        def failed(reason: BaseException) -> None:
            before = self.limit()
            self._declaring = False
            self._failures += 1
            if self._failures % LOUD_EVERY == 1:
                self.log.warning("[%s] rate limit: cannot declare its queues (%s): trying again "
                                 "every %.0f s; meanwhile no task waits for its turn",
                                 self.worker, reason, RETRY_SECONDS)
            self._tell(before)  # (waiting slots start now)
            self._again_later()

        declare_rate_queues(connection, self.spec, self._topology, self._safe(done),
                            self._safe(failed))

    def _on_arbiter_gone(self, why: str) -> None:
        self.log.warning("[%s] rate limit: the broker ended our subscription to %r (%s): "
                         "declaring it again", self.worker, self.spec.ratelimit_name, why)
        self._declared = None
        self._again_later()

    def _again_later(self) -> None:
        if self._retry is None:
            self._retry = self.ioloop.call_later(RETRY_SECONDS, self._retry_now)

    def _safe(self, callback: Callable[..., object]) -> Callable[..., None]:
        return guarded(self.log, f"[{self.worker}] rate limit: setting up failed", callback)

    def _retry_now(self) -> None:
        self._retry = None
        self._sync()


def _differs(old: RateLimit | None, new: RateLimit | None) -> bool:
    """Whether the tasks see a change: on or off, or another rate or mode."""
    if old is None or new is None:
        return (old is None) != (new is None)
    return (old.per_second, old.per_key) != (new.per_second, new.per_key)
