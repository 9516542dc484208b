"""The worker's publishing connection: results records, copies to ``<queue>.retry`` /
``.dead``, and what live views watch (snapshots, answers to control commands).

During a memory or disk alarm RabbitMQ blocks every connection that publishes and stops
reading from it, acks included. So the worker never publishes on the connection it consumes
from (RabbitMQ's own advice): ``Outbox`` is a second connection, on the same I/O loop, and
consuming never waits for it. While it is away (a lost connection):
  * results records wait, and so do the acks of their tasks (the task stays in hand);
  * a live snapshot waits too (only the latest is kept);
  * a copy to ``.retry``/``.dead`` waits too, and its original stays unacked until the copy is
    confirmed: the task is never lost, and the worker's other slots keep working.
While it is blocked (an alarm), a task's record and copy go to the worker's journal on disk
instead (``keep``, journal.py; the settlement asks, settlement.py) and the task is acked; once
the alarm is over the journal is published (confirmed), then deleted. So are the journals of
workers of this host that died (kill -9) with outcomes in them, found at each connection.
A copy the broker returns (its queue was deleted) makes the outbox declare the queues again and
send it once more, up to ``MAX_COPY_RETURNS`` times; only then is it refused (the consumer puts
the original back; returned.py). Returns are matched to publishes exactly: each copy carries an
``x-copy-id`` header unique in this worker, which the broker hands back with the return.
Records go to the ``<queue>.results`` stream in groups: while one group waits for its
confirm, the records that come meanwhile gather into the next, so a confirm is paid once per
group, not once per task. A group the broker returns (the stream was deleted) makes the outbox
declare everything again and send it again, like a copy. Everything is published with
confirms; what was unconfirmed when the connection dropped is sent again (records carry ids,
so readers count each once).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import replace

import pika
from pika.adapters.select_connection import IOLoop
from pika.channel import Channel
from pika.connection import Connection

from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.broker.connection import BrokerSession
from taskqueue.broker.frames import settled_tags
from taskqueue.broker.topology import ROUTING_CONTROL, ROUTING_LIVE
from taskqueue.log import log_dir
from taskqueue.wire.events import encode
from taskqueue.wire.record import encode_group
from taskqueue.worker.copies import Copy, RecordGroup
from taskqueue.worker.journal import Journal, safe_name
from taskqueue.worker.keeper import JournalKeeper
from taskqueue.worker.returned import ReturnedCopies

EVENT_PROPERTIES = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent,
                                        content_type="application/json")
LIVE_PROPERTIES = pika.BasicProperties(content_type="application/json", expiration="10000")
COPY_ID = "x-copy-id"
RECORD_GROUP = 1000  # records in one stream message at most
RECORD_GROUPS_IN_FLIGHT = 1  # the next group gathers while this one is confirmed
CONFIRM_TIMEOUT = 10.0  # seconds without a confirm, not blocked: the connection is no good


class Outbox(BrokerSession):
    """Publish for the worker on a connection of its own; see the module docstring."""

    label = "publishing connection"

    def __init__(self, settings: BrokerSettings, spec: QueueSpec, log: logging.Logger,
                 ioloop: IOLoop, worker: str) -> None:
        named = replace(settings, client_name=f"listening_worker {worker} (publishing)")
        super().__init__(named, log, queue_name=spec.name, ioloop=ioloop)
        self.spec = spec
        self.worker = worker
        self.connect_timeout = math.inf  # the consuming connection decides when to give up
        self.exchange_ready = False  # set by the consumer once the queues are set up
        self.on_block: Callable[[], None] | None = None  # told when the broker blocks us
        self.on_unblock: Callable[[], None] | None = None
        self.on_stalled: Callable[[str], None] | None = None  # confirms stopped at this URL
        self.on_connected: Callable[[Connection], None] | None = None  # each new connection
        self._copies: deque[Copy] = deque()
        self._records: deque[tuple[dict, Callable[[bool], None] | None]] = deque()
        self._unconfirmed: dict[int, Copy | RecordGroup | None] = {}
        self._in_flight: Counter = Counter()  # unconfirmed publishes by type of item
        self._sent_at: dict[int, float] = {}  # when each unconfirmed publish went out
        self._returned: set[str] = set()  # x-copy-id of copies returned, until confirmed
        self._copy_ids = itertools.count(1)
        self._returns = ReturnedCopies(spec, log, worker, self._send_again)
        self._snapshot: dict | None = None
        self._replies: deque[dict] = deque(maxlen=100)  # answers to control commands
        self._tag = 0
        self._closing_since: float | None = None
        self._grace = 0.0
        self._confirming = False
        self.keeper = JournalKeeper(Journal(log_dir() / "journal" / safe_name(spec.name)),
                                    log, worker, self._copies.append,
                                    lambda record, settled: self._records.append(
                                        (record, settled)))

    # --- what the consumer calls -----------------------------------------------------------
    def publish_copy(self, copy: Copy) -> None:
        self._copies.append(copy)
        self.send()

    def record_result(self, record: dict, on_confirmed: Callable[[bool], None] | None = None
                      ) -> None:
        """A results record, to be confirmed by the broker (then *on_confirmed(True)*); kept
        across reconnects until it is, never dropped."""
        self._records.append((record, on_confirmed))
        self.send()

    def reply(self, answer: dict) -> None:
        """An answer to a control command (task_control.py waits a few seconds for it)."""
        self._replies.append(answer)
        self.send()

    def announce(self, snapshot: dict) -> None:
        """The latest live snapshot; only the newest is ever sent (no backlog)."""
        self._snapshot = snapshot

    @property
    def waiting(self) -> int:
        """Events and copies not yet confirmed by the broker."""
        unconfirmed = sum(len(item.items) if isinstance(item, RecordGroup) else 1
                          for item in self._unconfirmed.values() if item is not None)
        return self.copies_waiting + self.records_waiting + unconfirmed

    @property
    def confirming(self) -> bool:
        """Connected, in confirm mode: what is published now can be confirmed."""
        return self._confirming and self.channel is not None

    @property
    def records_waiting(self) -> int:
        """Results records not yet sent (or waiting for the stream to be made again)."""
        remaking = sum(len(item.items) for item in self._returns.waiting or ()
                       if isinstance(item, RecordGroup))
        return len(self._records) + remaking + self.keeper.records

    @property
    def copies_waiting(self) -> int:
        """Copies not yet confirmed (waiting to be sent, being re-routed, unconfirmed, or in the
        journal), and one published from the journal until its retry delay is over: its task
        was acked during the alarm, so only this tells ``--exit-when-idle`` it comes back."""
        in_flight = sum(isinstance(item, Copy) and not item.cancelled
                        for item in self._unconfirmed.values())
        due_back = self._closing_since is None and self.keeper.copy_due_back
        return sum(not copy.cancelled for copy in (*self._copies, *(self._returns.waiting or ()))) \
            + in_flight + self.keeper.copies + due_back

    def send(self, everything: bool = False) -> None:
        """Publish the copies that wait, and full batches of events (everything, with
        *everything*: the consumer's flush beat, or closing), if the broker takes them now."""
        channel = self.channel
        if channel is None or not channel.is_open or self.blocked or not self._confirming:
            return
        if self.exchange_ready:  # (the queues a journaled copy goes to are set up)
            self.keeper.publish()
        while self._copies:
            copy = self._copies.popleft()
            if not copy.cancelled:
                copy.properties.headers = {**(copy.properties.headers or {}),
                                           COPY_ID: f"{self.worker}:{next(self._copy_ids)}"}
                self._publish(channel, "", copy.routing_key, copy.body, copy.properties, copy,
                              mandatory=True)
        if not self.exchange_ready:
            return
        self._send_records(channel)
        everything = everything or self._closing_since is not None
        while self._replies:
            self._publish(channel, self.spec.exchange, ROUTING_CONTROL,
                          encode([self._replies.popleft()]), LIVE_PROPERTIES, None)
        if self._snapshot is not None and everything:
            self._publish(channel, self.spec.exchange, ROUTING_LIVE, encode([self._snapshot]),
                          LIVE_PROPERTIES, None)
            self._snapshot = None

    def _send_records(self, channel: Channel) -> None:
        while self._records and self._in_flight[RecordGroup] < RECORD_GROUPS_IN_FLIGHT:
            count = min(RECORD_GROUP, len(self._records))
            group = RecordGroup([self._records.popleft() for _ in range(count)],
                                self.spec.results_name)
            self._publish_group(channel, group)

    def _publish_group(self, channel: Channel, group: RecordGroup) -> None:
        group.properties.headers = {COPY_ID: f"{self.worker}:{next(self._copy_ids)}"}
        self._publish(channel, "", group.routing_key,
                      encode_group([record for record, _ in group.items]), group.properties,
                      group, mandatory=True)

    def close(self, grace: float) -> None:
        """Send what waits for up to *grace* seconds (while the broker takes it), then close;
        ``on_finished`` follows."""
        self._closing_since = time.monotonic()
        self._grace = grace
        self._close_when_sent()

    # --- publishing with confirms -----------------------------------------------------------
    def _publish(self, channel: Channel, exchange: str, routing_key: str, body: bytes,
                 properties: pika.BasicProperties, item: Copy | RecordGroup | None,
                 mandatory: bool = False) -> None:
        channel.basic_publish(exchange, routing_key, body, properties, mandatory=mandatory)
        self._tag += 1
        self._unconfirmed[self._tag] = item
        self._in_flight[type(item)] += 1
        self._sent_at.setdefault(self._tag, time.monotonic())

    def on_channel_ready(self, channel: Channel) -> None:
        if self.on_connected is not None:  # the rate limit's asks have a channel of their own
            self.on_connected(channel.connection)
        self._tag = 0
        self.keeper.look_for_orphans = True
        self._confirming = False
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm,
                                 callback=lambda _frame: self._on_confirming())

    def _on_confirming(self) -> None:
        self._confirming = True
        self.mark_ready()
        self.send()

    def on_channel_lost(self) -> None:
        if self.on_unblock is not None:
            self.on_unblock()  # a block belongs to its connection (the next one is told again)
        self._confirming = False
        self._returned.clear()
        lost = list(self._unconfirmed.values())
        self._unconfirmed.clear()
        self._in_flight.clear()
        self._sent_at.clear()
        lost.extend(self._returns.take_back())  # their setup died with the connection
        copies = [item for item in lost if isinstance(item, Copy) and not item.cancelled]
        self._copies.extendleft(reversed(copies))
        for item in reversed(lost):
            if isinstance(item, RecordGroup):
                self._records.extendleft(reversed(item.items))

    def _on_return(self, _channel: Channel, _method: object, properties: pika.BasicProperties,
                   _body: bytes) -> None:
        # A return always precedes the confirm of the same message (only copies are mandatory).
        copy_id = (properties.headers or {}).get(COPY_ID)
        if isinstance(copy_id, bytes):
            copy_id = copy_id.decode("utf-8", "replace")
        if isinstance(copy_id, str):
            self._returned.add(copy_id)

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        acked, tags = settled_tags(frame, self._unconfirmed)
        for tag in tags:
            item = self._unconfirmed.pop(tag)
            self._in_flight[type(item)] -= 1
            self._sent_at.pop(tag, None)
            if isinstance(item, (Copy, RecordGroup)):
                copy_id = item.properties.headers.get(COPY_ID)
                if copy_id in self._returned or (isinstance(item, RecordGroup) and not acked):
                    self._returned.discard(copy_id)
                    self._returns.returned(item, self.connection)
                elif isinstance(item, RecordGroup):
                    item.settle(True)
                else:
                    item.on_settled(acked)
        self.send()
        if self._closing_since is not None:
            self._close_when_sent()

    # --- a broker that stopped confirming ---------------------------------------------------
    def check_confirms(self, now: float) -> None:
        """Called on the consumer's beat. The broker owes a confirm for longer than
        ``CONFIRM_TIMEOUT`` while not blocking us (an alarm would explain it): the node behind
        the stream or queue went away without a word (a stream's leader lost, a partition).
        Start over on a fresh connection: what was unconfirmed is sent again, to wherever the
        stream or queue now lives."""
        if not self._sent_at or self.blocked or self._finishing:
            return
        oldest = next(iter(self._sent_at.values()))
        if now - oldest < CONFIRM_TIMEOUT:
            return
        self.log.warning("[%s] the broker has not confirmed what we published %.0f s ago and "
                         "is not blocking us (a node lost?): reconnecting to send it again",
                         self.worker, now - oldest)
        self._sent_at.clear()  # said once per connection
        if self.on_stalled is not None:
            self.on_stalled(self.url)
        self.drop_connection("confirms stopped")

    # --- a copy with no queue to go to (returned.py) -------------------------------------------
    def _send_again(self, returned: list[Copy | RecordGroup]) -> None:
        """Copies the broker returned, their queues declared again since."""
        # Sent again on this connection, or on the next one if this one is gone.
        for item in returned:
            if isinstance(item, RecordGroup):
                self._resend_group(item)
            elif not item.cancelled:
                self._copies.append(item)
        self.send()

    def _resend_group(self, group: RecordGroup) -> None:
        channel = self.channel
        if channel is not None and channel.is_open and self._confirming and not self.blocked:
            self._publish_group(channel, group)  # keeps its count of returns
        else:
            self._records.extendleft(reversed(group.items))

    # --- the journal: what an alarm keeps us from publishing (keeper.py) -------------------
    def when_blocked(self, journal_it: Callable[[], bool]) -> None:
        """Call *journal_it* if the broker blocks us (until ``forget``): a settlement waiting
        for its confirms then keeps its outcome in the journal instead."""
        self.keeper.waiting.add(journal_it)

    def forget(self, journal_it: Callable[[], bool]) -> None:
        self.keeper.waiting.discard(journal_it)

    def keep(self, record: dict | None, copy: Copy | None) -> bool:
        """Blocked: write *record* and *copy* to the journal (fsynced) and take them back from
        what waits to be sent; they go out once the alarm is over. False, nothing kept: the
        copy is on its way already (kept too, it would be sent twice), or the journal cannot
        be written; they wait for the broker, as without a journal."""
        if copy is not None and any(item is copy for item in (*self._unconfirmed.values(),
                                                              *(self._returns.waiting or ()))):
            return False
        if not self.keeper.write(record, copy):
            return False
        if record is not None:
            self._records = deque(item for item in self._records if item[0] is not record)
        if copy is not None:
            copy.cancelled = True  # it goes out from the journal
        return True

    # --- the alarm, said once on the worker ---------------------------------------------------
    def on_blocked(self, reason: str) -> None:
        if self.on_block is not None:
            self.on_block()
        self.log.warning("[%s] the broker blocks publishing (%s; a memory or disk alarm): "
                         "results records and retry/dead-letter copies go to the journal in %s "
                         "until it ends, and finished tasks are acked", self.worker, reason,
                         self.keeper.journal.directory)
        self.keeper.blocked()

    def on_unblocked(self) -> None:
        # The alarm's time does not count towards CONFIRM_TIMEOUT: what was published before
        # or during it is confirmed now, not 10 s ago (reconnecting at once sent a copy to
        # .retry twice: found by make chaos, seed 24031).
        now = time.monotonic()
        self._sent_at = dict.fromkeys(self._sent_at, now)
        if self.on_unblock is not None:
            self.on_unblock()
        self.log.info("[%s] the alarm is over: publishing again (%d waiting)", self.worker,
                      self.waiting)
        self.send()

    # --- closing ------------------------------------------------------------------------
    def _close_when_sent(self) -> None:
        since = self._closing_since  # set before the first call: closing began then
        if self._finished or self._finishing or since is None:
            return
        self.send()
        pending = self.waiting
        out_of_time = time.monotonic() - since >= self._grace
        if pending and not out_of_time and self.connections_made:
            self.ioloop.call_later(0.05, self._close_when_sent)
            return
        unsent = self.records_waiting - self.keeper.records
        if pending and self.exchange_ready and unsent:
            self.log.warning("[%s] %d results records could not be sent before exiting (broker "
                             "away or blocking): their tasks were not acked, and run again",
                             self.worker, unsent)
        kept = self.keeper.journal.seal()
        if kept is not None:
            self.log.warning("[%s] the alarm is not over: the outcomes of finished tasks stay in "
                             "the journal %s; the next worker of this host on this queue "
                             "publishes them", self.worker, kept)
        self.finish()
