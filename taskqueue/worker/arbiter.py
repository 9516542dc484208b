"""The arbiter's side of the rate limit: answer every worker's asks for a turn.

Every worker that knows a limit is in force consumes ``<queue>.ratelimit``, a queue declared
with ``x-single-active-consumer``: RabbitMQ hands its asks to one consumer only, and that
worker *is* the arbiter, with no election of ours. It runs control/ratelimit.py's ``Scheduler``
(GCRA per key) and answers each ask through direct reply-to (``reply``: the default exchange,
the ask's ``reply_to`` as routing key, its id as ``correlation_id``; not confirmed, since a lost
answer is asked again).

AMQP 0-9-1 says nothing when a consumer becomes the active one: the first ask after
``basic.consume`` is how we learn it, and then the scheduler starts quiet (R1: the previous
arbiter may have given tickets up to ``HOLD`` ahead). Every ask is acked, answered or not: an
ask held unacked would stop the queue's deliveries once the consumer timeout passes (4.3).
Prefetch 10 (R4): an arbiter that stalls comes back with few stale asks, and asks it held go
back to the next arbiter at once, keeping their expiry.

The role does not follow the worker's phase: paused, draining or waiting for slots, it keeps
answering; it ends with the limit (``stop``), the connection, or the worker.
Its channel is its own, on the consuming connection (acks only: nothing is published there).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pika
from pika.channel import Channel
from pika.connection import Connection
from pika.spec import Basic

from taskqueue.broker.config import QueueSpec
from taskqueue.control.ratelimit import Scheduler, decode_ask, encode_answer
from taskqueue.worker.guard import guarded

PREFETCH = 10
Reply = Callable[[str, str, bytes], bool]  # (reply_to, correlation_id, body): sent?


class Arbiter:
    """The single-active consumer of ``<queue>.ratelimit``; see the module docstring."""

    def __init__(self, spec: QueueSpec, log: logging.Logger, worker: str, reply: Reply,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.spec, self.log, self.worker = spec, log, worker
        self.reply, self.clock = reply, clock
        self.scheduler: Scheduler | None = None
        self.on_gone: Callable[[str], None] | None = None  # the broker ended our consumer
        self.active = False  # an ask came since we subscribed: we are the arbiter
        self.answered = 0
        self._channel: Channel | None = None  # subscribed on it
        self._opening = False  # a channel asked for, not open yet
        self._generation = 0  # start, stop and loss each begin a new one
        self._unsent = 0  # answers we could not send since the last line said so

    @property
    def consuming(self) -> bool:
        return self._channel is not None or self._opening

    def start(self, connection: Connection, per_second: float) -> None:
        """Join the queue's consumers (the broker makes one of them the active one)."""
        if self.consuming or not connection.is_open:
            return
        if self.scheduler is None:
            self.scheduler = Scheduler(per_second)
        else:
            self.scheduler.set_rate(per_second)
        self._end_role()
        self._opening = True
        generation = self._generation
        connection.channel(on_open_callback=lambda channel: self._on_open(channel, generation))

    def _end_role(self) -> None:
        self._generation += 1
        self._channel, self._opening, self.active = None, False, False

    def _on_open(self, channel: Channel, generation: int) -> None:
        if generation != self._generation:
            channel.close()  # stopped meanwhile
            return
        self._channel, self._opening = channel, False
        channel.add_on_close_callback(self._on_closed)
        channel.add_on_cancel_callback(lambda _frame: self._gone(channel, "cancelled by the "
                                                                          "broker"))
        channel.basic_qos(prefetch_count=PREFETCH, callback=lambda _frame: channel.basic_consume(
            self.spec.ratelimit_name, self._on_ask, auto_ack=False))

    def set_rate(self, per_second: float) -> None:
        if self.scheduler is not None:
            self.scheduler.set_rate(per_second)

    def stop(self) -> None:
        """Leave the role (the limit is off, or the worker stops): closing our channel ends
        the consumer, and the asks we hold go to the next arbiter at once."""
        channel = self._channel
        self._end_role()
        if channel is not None and channel.is_open:
            channel.close()

    def lost(self) -> None:
        """The consuming connection is gone, and our channel with it."""
        self._end_role()

    def busiest(self, n: int = 10) -> list[tuple[str, float]]:
        if not self.active or self.scheduler is None:
            return []
        return self.scheduler.busiest(self.clock(), n)

    # --- the broker's side ----------------------------------------------------------------------
    def _on_closed(self, channel: Channel, reason: BaseException) -> None:
        if isinstance(reason, pika.exceptions.ChannelClosedByBroker):
            self._gone(channel, str(reason))
        elif channel is self._channel:
            self.lost()

    def _gone(self, channel: Channel, why: str) -> None:
        if channel is not self._channel:
            return
        self.stop()
        if self.on_gone is not None:
            self.on_gone(why)

    def _on_ask(self, channel: Channel, method: Basic.Deliver,
                properties: pika.BasicProperties, body: bytes) -> None:
        guarded(self.log, f"[{self.worker}] rate limit: answering an ask failed",
                self._answer)(channel, properties, body)  # the ask is acked below anyway
        if channel.is_open:
            channel.basic_ack(method.delivery_tag)

    def _answer(self, channel: Channel, properties: pika.BasicProperties, body: bytes) -> None:
        if channel is not self._channel or self.scheduler is None:
            return  # stopped meanwhile: the ask goes back when the channel closes
        now = self.clock()
        if not self.active:
            self.active = True  # R1: the previous arbiter's tickets reach up to HOLD ahead
            self.scheduler.quiet_start(now)
            self.log.info("[%s] rate limit: this worker is the arbiter now (answering asks "
                          "on %r)", self.worker, self.spec.ratelimit_name)
        ask = decode_ask(body)
        reply_to, ask_id = properties.reply_to, properties.correlation_id
        if ask is None or not reply_to or not ask_id:
            self.log.warning("[%s] rate limit: an unreadable ask on %r (%r): dropped",
                             self.worker, self.spec.ratelimit_name, body[:100])
            return
        answer = self.scheduler.ask(ask["key"], now, ask["returner"])
        if self.reply(reply_to, ask_id, encode_answer(answer)):
            self.answered += 1
            if self._unsent:
                self.log.info("[%s] rate limit: answering again (%d answer(s) could not be "
                              "sent)", self.worker, self._unsent)
                self._unsent = 0
        else:
            if not self._unsent:
                self.log.warning("[%s] rate limit: cannot send answers now (our publishing "
                                 "connection is away): the askers ask again", self.worker)
            self._unsent += 1

