"""Publish tasks as persistent messages, confirmed by the broker, as fast as it takes them.

The classic emitter waits for each confirm before sending the next message: one network round
trip per task (~1,600 msg/s here). ``ConfirmedPublisher`` keeps up to ``window`` messages in
flight and counts each one sent only when its confirm arrives (acks may cover many at once). If
the connection drops, every message still unconfirmed is published again on the next
connection, with the same ``message_id``: nothing is lost, and duplicates are limited to those
messages (the summary says how many, and which rows).

The rows are read on a thread of their own (feed.py), so a slow input never stalls the I/O loop.
``ResumeState`` remembers, per (file, queue), the last row up to which every row was confirmed,
so ``--resume`` continues an interrupted run without publishing anything twice (after a clean
end, the rows refused too: ``--resume`` sends exactly those again, then the rows after).
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence

import pika
from pika.channel import Channel

from taskqueue.broker.config import BrokerSettings, QueueSpec, mask_url
from taskqueue.broker.connection import BrokerSession
from taskqueue.broker.frames import settled_tags
from taskqueue.broker.topology import ROUTING_LIVE, Topology
from taskqueue.broker.urgent import queue_for
from taskqueue.emitter.feed import TaskFeed
from taskqueue.emitter.resume import MAX_REFUSED_KEPT, ResumeState
from taskqueue.emitter.stats import PublishStats
from taskqueue.emitter.tasks import Task
from taskqueue.errors import EXIT_REFUSED, UserError
from taskqueue.wire.events import run_event
from taskqueue.wire.messages import FIRST_PUBLISH, PUBLISHED_AGAIN

# The broker confirms persistent messages once they are on disk, in batches; the window must be
# wide enough to keep it busy while the previous batch is written. It is also how many messages
# a lost connection can leave unconfirmed, i.e. published twice. Measured here (bench/): a
# quorum queue reaches 98% of its best rate at 2,000, a classic one needs 10,000 (85% at 2,000).
# So the default follows the queue's type. The byte cap bounds memory whatever the task size.
CONFIRM_WINDOWS = {"quorum": 2_000, "classic": 10_000}
MAX_IN_FLIGHT_BYTES = 16 * 1024 * 1024
HORIZON_ROWS = 10_000  # rows read ahead of the saved resume point's published_through
# Seconds with messages in flight, no confirm, and the broker not blocking us: the node we
# publish to cannot reach the queue's majority (a network partition leaves it running and
# silent). The connection is then given up: what was unconfirmed goes to the next URL.
CONFIRM_TIMEOUT = 10.0
EVENT_PROPERTIES = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent,
                                        content_type="application/json")


class ConfirmedPublisher(BrokerSession):
    """Drain *tasks* into the queue with pipelined publisher confirms.

    ``run()`` returns when every task read was confirmed or rejected (or after a first stop
    request once the ones in flight are settled; a second request stops at once). A problem in
    the input (``UserError`` from the task iterator) stops reading; it is kept in
    ``input_error`` and the run still settles the rest.
    """

    def __init__(self, settings: BrokerSettings, queue: QueueSpec, tasks: Iterator[Task],
                 log: logging.Logger, *, window: int | None = None, run_id: str = "",
                 on_tick: Callable[[PublishStats], None] | None = None,
                 state: ResumeState | None = None, start_after: int = 0,
                 total: int | None = None, interactive_input: bool = False,
                 again_through: int = 0, priority: str = "normal",
                 replay: Sequence[int] = ()) -> None:
        super().__init__(settings, log, queue_name=queue.name)
        self.queue = queue
        # High: to <queue>.urgent, which every worker takes from first (broker/urgent.py).
        self._routing_key = queue_for(queue.name, priority)
        self.stats = PublishStats()
        self.stop_requested = False
        self.first_bad_row: int | None = None  # lowest row rejected by the broker
        self.last_row_read = start_after  # the highest row read (refused rows sent again aside)
        # --resume: rows the earlier run had refused, sent again first (the tasks are in order)
        self._replay, self._replay_next = sorted(replay), 0
        self.refused: list[int] | None = []  # rows refused; None: more than MAX_REFUSED_KEPT
        self.confirmed_rows = bytearray()  # a byte per row: 1 once confirmed (for --wait)
        self._feed = TaskFeed(tasks, lambda: self.call_threadsafe(self._fill),
                              interactive=interactive_input)
        self._window = window  # None: by the queue's type, once it is known
        self._run_id = run_id
        self._total = total
        self._on_tick = on_tick
        self._state = state
        self._save_failing = False  # the last save of the resume point failed
        self._ticks = 0
        self._reading = True
        self._in_flight: dict[int, Task | None] = {}  # tag -> task (None: a run event)
        self._in_flight_bytes = 0
        self._resend: deque[Task] = deque()  # unconfirmed when a connection was lost
        # Rows an earlier emitter of this run may have published (--resume): typed as sent
        # again, so that a worker checks the record first. Beyond the horizon saved with the
        # resume point, no row is ever published before the point is saved again.
        self._again_through = again_through
        self._horizon = 0
        self._returned: set[str] = set()  # message_ids the broker could not route
        self._next_tag = 0
        self._publishing = False  # the channel is in confirm mode: _fill may publish
        self._depth_asked_on: object | None = None  # the connection asked for the final depth
        self._waiting_since: float | None = None  # in flight with no confirm since (see _tick)

    # --- progress ------------------------------------------------------------------------
    @property
    def input_error(self) -> UserError | None:
        return self._feed.error

    def confirmed_through(self) -> int:
        """The highest row such that it and every row before it are confirmed."""
        pending = [t.row for t in self._in_flight.values() if t] + [t.row for t in self._resend]
        bounds = [self.last_row_read]
        if pending:
            bounds.append(min(pending) - 1)
        if self.first_bad_row is not None:
            bounds.append(self.first_bad_row - 1)
        if self._replay_next < len(self._replay):
            bounds.append(self._replay[self._replay_next] - 1)
        return min(bounds)

    @property
    def answered_all(self) -> bool:
        """Every row published has its answer (confirmed or refused): a clean end."""
        return not self._resend and all(task is None for task in self._in_flight.values())

    def rows_to_resume(self) -> list[int] | None:
        """At a clean end, the rows --resume publishes again before those after last_row_read:
        refused ones, and an earlier run's not sent again yet (a stop). None: not clean, or too
        many refused: --resume then starts after confirmed_through()."""
        if not self.answered_all or self.refused is None:
            return None
        rows = sorted(set(self.refused) | set(self._replay[self._replay_next:]))
        return rows if len(rows) <= MAX_REFUSED_KEPT else None

    @property
    def resumable(self) -> bool:
        """Whether --resume can continue this run (a file, with its state kept)."""
        return self._state is not None

    def on_stop_request(self, count: int) -> None:
        """First: stop reading rows, finish once the messages in flight are confirmed.
        Second: stop now (the resume point already saved covers only confirmed rows)."""
        if count > 1:
            self.log.warning("second stop request: stopping now, %d messages unconfirmed",
                             len(self._in_flight) + len(self._resend))
            self.finish()
            return
        self.stop_requested = True
        self._reading = False
        self.log.warning("stop requested: no more rows are read; waiting for %d confirms "
                         "(Ctrl+C again to stop at once)", len(self._in_flight) + len(self._resend))
        self._finish_if_settled()

    # --- BrokerSession hooks ---------------------------------------------------------------
    def on_channel_ready(self, channel: Channel) -> None:
        self.set_up_queues(channel, self.queue, lambda topology: self._enable_confirms(
            channel, topology))
        if self.connections_made == 1:
            self._tick()

    def on_channel_lost(self) -> None:
        self._publishing = False
        self._waiting_since = None
        self._returned.clear()  # returns belong to the lost channel's deliveries
        unconfirmed = [task for task in self._in_flight.values() if task is not None]
        self._in_flight.clear()
        self._in_flight_bytes = 0
        # Kept for sending again (and for the resume point, which stays before them).
        self._resend.extendleft(reversed(unconfirmed))
        if unconfirmed and not self._finishing:  # stopping: --resume sends them again
            self.stats.note_republished([task.row for task in unconfirmed])
            self.log.warning("%d messages were not confirmed before the connection dropped; "
                             "they will be published again (same message_id; those the broker "
                             "had already taken are duplicates)", len(unconfirmed))

    # --- publishing --------------------------------------------------------------------
    def _enable_confirms(self, channel: Channel, topology: Topology) -> None:
        if self._routing_key != self.queue.name and not topology.urgent:
            self.fail(UserError(f"no permission on {self._routing_key!r}, where urgent tasks "
                                "(--priority high) go: grant configure/write/read on it "
                                "(rabbitmqctl set_permissions)", EXIT_REFUSED))
            return
        if self._window is None:
            self._window = CONFIRM_WINDOWS.get(topology.task_type, CONFIRM_WINDOWS["classic"])
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm,
                                 callback=lambda _frame: self._start(channel))

    def _start(self, channel: Channel) -> None:
        self._next_tag = 0  # delivery tags restart at 1 on every channel
        self._publishing = True
        self.mark_ready()
        if self.connections_made == 1 and self.channel is channel:
            self._announce("started")
        self._fill()

    def _fill(self) -> None:
        channel, window = self.channel, self._window
        if channel is None or window is None or not self._publishing:
            return  # not yet in confirm mode on this channel (the reader may wake us early)
        while (channel.is_open and len(self._in_flight) < window
               and self._in_flight_bytes < MAX_IN_FLIGHT_BYTES and not self._finishing):
            taken = self._next_task()
            if taken is None:
                break
            task, again = taken
            channel.basic_publish("", self._routing_key, task.body,
                                  self._properties(task, again), mandatory=True)
            self._next_tag += 1
            self._in_flight[self._next_tag] = task
            self._in_flight_bytes += len(task.body)
        self._finish_if_settled()

    def _next_task(self) -> tuple[Task, bool] | None:
        """The next task to publish, and whether it may have been published before."""
        if self._resend:
            return self._resend.popleft(), True
        if not self._reading:
            return None
        task = self._feed.take()
        if task is None:
            if self._feed.finished:
                self._reading = False
                if self._feed.error is None:  # refused rows the file no longer has: none left
                    self._replay_next = len(self._replay)
            return None
        self.stats.read += 1
        while self._replay_next < len(self._replay) and self._replay[self._replay_next] <= task.row:
            self._replay_next += 1  # sent again now (or skipped by --skip-done, or gone)
        self.last_row_read = max(self.last_row_read, task.row)
        if task.row > self._horizon and (self.stats.confirmed or self.stats.rejected):
            self.save_state(complete=False)  # a --resume must know this row may be out
        return task, task.row <= self._again_through

    def _properties(self, task: Task, again: bool) -> pika.BasicProperties:
        # No headers table unless the task has a rate-limit key (--key-column): the broker
        # decodes it for every message (~12 us of broker CPU each, a quarter of its work here).
        # The row travels inside message_id (see tasks.row_of), the run id in correlation_id,
        # which groups the messages of one run; ``type`` says whether a worker must check the
        # record first (wire/messages.py).
        return pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent, message_id=task.message_id,
            correlation_id=self._run_id, content_type="text/plain", timestamp=int(time.time()),
            type=PUBLISHED_AGAIN if again else FIRST_PUBLISH, headers=task.headers)

    def _announce(self, state: str) -> None:
        """Tell the record (the results stream) and live views about this run: its total rows,
        then how many it published."""
        channel = self.channel
        if channel is None or not channel.is_open or not self._publishing:
            return
        body = json.dumps([run_event(self._run_id, self.queue.name, state, self._total,
                                     self.stats.confirmed)]).encode()
        for exchange, routing_key in (("", self.queue.results_name),
                                      (self.queue.exchange, ROUTING_LIVE)):
            channel.basic_publish(exchange, routing_key, body, EVENT_PROPERTIES)
            self._next_tag += 1
            self._in_flight[self._next_tag] = None

    def _on_return(self, _channel: Channel, _method: object, properties: pika.BasicProperties,
                   _body: bytes) -> None:
        # A return always precedes the confirm of the same message.
        if properties.message_id:
            self._returned.add(properties.message_id)

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        acked, tags = settled_tags(frame, self._in_flight)
        self._waiting_since = time.monotonic() if self._in_flight else None
        for tag in tags:
            task = self._in_flight.pop(tag)
            if task is not None:
                self._in_flight_bytes -= len(task.body)
                self._settle(task, acked)
        self._fill()

    def _settle(self, task: Task, acked: bool) -> None:
        if acked and task.message_id not in self._returned:
            self.stats.confirmed += 1
            if task.row >= len(self.confirmed_rows):
                self.confirmed_rows.extend(bytes(max(task.row + 1 - len(self.confirmed_rows),
                                                     len(self.confirmed_rows))))
            self.confirmed_rows[task.row] = 1
            return
        self._returned.discard(task.message_id)
        self.stats.rejected += 1
        if self.first_bad_row is None or task.row < self.first_bad_row:
            self.first_bad_row = task.row
        if self.refused is not None:
            self.refused.append(task.row)
            if len(self.refused) > MAX_REFUSED_KEPT:
                self.refused = None  # --resume falls back to the watermark (said at the end)
        why = "refused (nack)" if not acked else f"returned: no queue {self.queue.name!r}"
        if self.stats.rejected <= 10:
            self.log.error("row %d %s by the broker: %r", task.row, why, task.text[:80])

    # --- ending ------------------------------------------------------------------------
    def _finish_if_settled(self) -> None:
        if (self._reading or self._resend or self._finishing
                or any(task is not None for task in self._in_flight.values())):
            return
        if self.stats.finished is None:
            self.stats.finished = time.monotonic()
            self._announce("finished")
        # Read the queue's depth and consumer count for the summary, then close. (Asked again
        # on the next connection if this one is lost meanwhile: _start comes back here.)
        if self._depth_asked_on is not self.connection:
            self._depth_asked_on = self.connection
            self.inspect_queue(self.queue.name, self._on_depth)

    def _on_depth(self, depth: int | None, consumers: int | None) -> None:
        self.stats.queue_depth, self.stats.consumers = depth, consumers
        self.finish()

    def _tick(self) -> None:
        if self.stats.finished or self._finishing:
            return
        self._ticks += 1
        self._check_confirms(time.monotonic())
        if self._on_tick is not None:
            self._on_tick(self.stats)
        if self._ticks % 5 == 0:  # about once a second: a SIGKILL loses at most that much
            self.save_state(complete=False, periodic=True)
        self.ioloop.call_later(0.2, self._tick)

    def _check_confirms(self, now: float) -> None:
        """No confirm for CONFIRM_TIMEOUT while messages are in flight and the broker is not
        blocking us (an alarm would explain it): the node went silent, most likely cut off
        from the queue's majority. Start over on the next URL; on_channel_lost sends the
        unconfirmed messages again there."""
        since = self._waiting_since
        if not self._in_flight or not self._publishing:
            self._waiting_since = None
            return
        if since is None or self.blocked:  # the clock starts now (an alarm's time not counted)
            self._waiting_since = now
            return
        if now - since < CONFIRM_TIMEOUT:
            return
        self._waiting_since = None  # said once per connection
        self.log.warning("%s has not confirmed any of the %d messages in flight for %.0f s and "
                         "is not blocking us: the node cannot reach the queue's majority (a "
                         "network partition?); moving to the next URL", mask_url(self.url),
                         len(self._in_flight), now - since)
        self.drop_connection("confirms stopped")

    def save_state(self, complete: bool, periodic: bool = False, end: bool = False) -> None:
        """Record how far the file is confirmed, for --resume (at a clean *end*, also the rows
        to send again: rows_to_resume). A run with no answer from the broker leaves the saved
        point alone. A point that cannot be saved is one warning (once while it keeps failing,
        if *periodic*), never an exception: the run goes on, and the next save tries again."""
        if self._state is None or (self.stats.confirmed == 0 and not self.stats.rejected):
            return
        through = self.confirmed_through()
        horizon = max(self._horizon, self.last_row_read + HORIZON_ROWS)
        refused = self.rows_to_resume() if end else None
        try:
            self._state.save(through, complete, self._run_id, published_through=horizon,
                             refused=refused, read_through=self.last_row_read)
        except OSError as error:
            if not (periodic and self._save_failing):
                then = "it is tried again each second" if periodic else \
                    f"--resume would start after row {self._state.confirmed_through()}"
                self.log.warning("cannot save the resume point (rows through %d confirmed) to "
                                 "%s: %s; %s", through, self._state.path, error, then)
            self._save_failing = True
            return
        self._save_failing = False
        self._horizon = horizon
