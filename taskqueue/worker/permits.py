"""The requester's side of the rate limit: ask the arbiter for a turn, wait for its answer.

One channel of its own on the worker's **publishing** connection (the outbox's: the consuming
connection never publishes, so an alarm cannot stop consuming), in **no confirm** mode: an ask
that is lost is simply asked again, and the outbox's confirm counter stays its own. On it:
  * a no-ack consumer of ``amq.rabbitmq.reply-to`` (direct reply-to: the answer comes straight
    back, stored nowhere; RabbitMQ wants the asks published on the channel that consumes it);
  * the asks, to ``<queue>.ratelimit`` through the default exchange, ``reply_to`` set and the
    ask's id as ``correlation_id``;
  * the arbiter's answers to other workers (``reply``), on this worker's arbiter role.
The channel is opened again on every new publishing connection, and asks still waiting are sent
again on it. A wait not answered within ``ASK_TIMEOUT`` (no arbiter, the ask expired in the
queue, the answer lost) is asked again with a new id; the first answer to any of its ids wins,
the others are ignored, as is every answer to a cancelled wait.
Everything here runs on the worker's I/O thread.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import pika
from pika.adapters.select_connection import IOLoop
from pika.channel import Channel
from pika.connection import Connection
from pika.spec import Basic

from taskqueue.broker.config import QueueSpec
from taskqueue.control.ratelimit import ASK_TIMEOUT, Answer, decode_answer, encode_ask
from taskqueue.worker.guard import guarded

REPLY_TO = "amq.rabbitmq.reply-to"
KEEP_IDS = 4  # a wait's latest ids whose answers still count (a late one is as good)
REOPEN_SECONDS = 2.0  # the channel closed while its connection lives: open it again after this


@dataclass(eq=False)
class Wait:
    """One slot's wait for its turn: every id it asked with, until answered or cancelled."""

    key: str
    returner: bool
    on_answer: Callable[[Answer], None]
    ids: list[str] = field(default_factory=list)
    timer: object = None  # the re-ask timeout
    over: bool = False


class Permits:
    """Asks and answers; see the module docstring. ``ask`` returns a cancel function."""

    def __init__(self, spec: QueueSpec, log: logging.Logger, worker: str, ioloop: IOLoop,
                 blocked: Callable[[], bool] = lambda: False) -> None:
        self.spec, self.log, self.worker, self.ioloop = spec, log, worker, ioloop
        self.blocked = blocked  # the broker blocks our publishing connection (an alarm)
        self.on_open: Callable[[], None] | None = None  # the channel is ready (or again)
        self.on_lost: Callable[[], None] | None = None  # the channel is gone
        self.channel: Channel | None = None  # open and consuming its replies: usable
        self._connection: Connection | None = None
        self._waits: dict[str, Wait] = {}  # by ask id (a wait has one id per ask)
        self._ids = itertools.count(1)
        self._closed = False
        self.asked = self.answered = 0  # counts, for tests and the log

    @property
    def ready(self) -> bool:
        return self.channel is not None and self.channel.is_open

    @property
    def waiting(self) -> int:
        return len({id(wait) for wait in self._waits.values()})

    # --- the channel ------------------------------------------------------------------------
    def open(self, connection: Connection) -> None:
        """A publishing connection is up: open our channel on it (once per connection)."""
        if connection is self._connection or not connection.is_open:
            return  # opened (or opening) on it already
        self._connection, self.channel = connection, None
        connection.channel(on_open_callback=lambda channel: self._on_channel(connection,
                                                                             channel))

    def _on_channel(self, connection: Connection, channel: Channel) -> None:
        if connection is not self._connection:
            channel.close()  # closed by us meanwhile (the worker stops)
            return
        channel.add_on_close_callback(lambda closed, reason: self._on_closed(
            connection, closed, reason))
        channel.basic_consume(REPLY_TO, self._on_reply, auto_ack=True,
                              callback=lambda _frame: self._consuming(channel))

    def _consuming(self, channel: Channel) -> None:
        if not channel.is_open:
            return
        self.channel = channel
        waiting = {id(wait): wait for wait in self._waits.values()}
        for wait in waiting.values():  # asked on a channel gone since: its answer never comes
            self._send(wait)
        if self.on_open is not None:
            self.on_open()

    def _on_closed(self, connection: Connection, channel: Channel, reason: BaseException) -> None:
        if self.channel is channel:
            self.channel = None
            if self.on_lost is not None:
                self.on_lost()
        if not connection.is_open or connection is not self._connection:
            return  # closed by us, or the connection went with it: the next one opens one
        self.log.warning("[%s] rate limit: the channel for asks closed (%s); opening it again "
                         "in %.0f s", self.worker, reason, REOPEN_SECONDS)
        self._connection = None
        self.ioloop.call_later(REOPEN_SECONDS, lambda: self._reopen(connection))

    def _reopen(self, connection: Connection) -> None:
        if self._connection is None and not self._closed:
            self.open(connection)

    def close(self) -> None:
        """The worker stops: no more asks, none answered."""
        self._closed = True
        for wait in list(self._waits.values()):
            self._end(wait)
        channel, self.channel, self._connection = self.channel, None, None
        if channel is not None and channel.is_open:
            channel.close()

    # --- asking -------------------------------------------------------------------------------
    def ask(self, key: str, returner: bool, on_answer: Callable[[Answer], None]
            ) -> Callable[[], None]:
        """Ask for a turn for *key*; *on_answer(answer)* once, with the first answer. Returns
        the wait's cancel: after it, no answer is delivered."""
        wait = Wait(key, returner, on_answer, over=self._closed)
        self._send(wait)
        return lambda: self._end(wait)

    def _send(self, wait: Wait) -> None:
        """Ask (again) with a new id, and ask again if no answer comes in ASK_TIMEOUT."""
        if wait.over:
            return
        if wait.timer is not None:
            self.ioloop.remove_timeout(wait.timer)
        wait.timer = self.ioloop.call_later(ASK_TIMEOUT, guarded(
            self.log, f"[{self.worker}] rate limit: asking again failed",
            lambda: self._again(wait)))
        channel = self.channel
        if channel is None or not channel.is_open or self.blocked():
            return  # sent once the channel is back (or on the next timeout)
        ask_id = f"{self.worker}:{next(self._ids)}"
        wait.ids.append(ask_id)
        self._waits[ask_id] = wait
        while len(wait.ids) > KEEP_IDS:  # answers to asks this old no longer come
            self._waits.pop(wait.ids.pop(0), None)
        try:
            channel.basic_publish("", self.spec.ratelimit_name,
                                  encode_ask(wait.key, wait.returner, ask_id, self.worker),
                                  pika.BasicProperties(reply_to=REPLY_TO, correlation_id=ask_id))
        except Exception as exc:  # a channel closing under us: the timeout asks again
            self.log.warning("[%s] rate limit: could not send an ask (%s); asking again in "
                             "%.0f s", self.worker, exc, ASK_TIMEOUT)
            return
        self.asked += 1

    def _again(self, wait: Wait) -> None:
        wait.timer = None
        self._send(wait)

    def _end(self, wait: Wait) -> None:
        wait.over = True
        if wait.timer is not None:
            self.ioloop.remove_timeout(wait.timer)
            wait.timer = None
        for ask_id in wait.ids:
            self._waits.pop(ask_id, None)

    def _on_reply(self, _channel: Channel, _method: Basic.Deliver,
                  properties: pika.BasicProperties, body: bytes) -> None:
        wait = self._waits.get(properties.correlation_id or "")
        if wait is None:
            return  # answered already by another of its asks, cancelled, or not ours
        answer = decode_answer(body)
        if answer is None:
            self.log.warning("[%s] rate limit: an unreadable answer from the arbiter (%r): "
                             "waiting for the next", self.worker, body[:100])
            return
        self._end(wait)
        self.answered += 1
        guarded(self.log, f"[{self.worker}] rate limit: acting on the answer for key "
                f"{wait.key!r} failed", wait.on_answer)(answer)  # the slot's own code

    # --- the arbiter's answers (arbiter.py) ----------------------------------------------------
    def reply(self, reply_to: str, correlation_id: str, body: bytes) -> bool:
        """Send an answer to another worker's ask (not confirmed: a lost answer is asked
        again). False when our channel is not there to send it."""
        channel = self.channel
        if channel is None or not channel.is_open:
            return False
        channel.basic_publish("", reply_to, body,
                              pika.BasicProperties(correlation_id=correlation_id))
        return True
