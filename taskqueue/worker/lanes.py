"""Deliveries that came while every slot was busy, waiting for a free slot: urgent first.

A worker consumes two queues on its task channel (consumer.py): ``<queue>.urgent`` with a
prefetch of ``urgent_prefetch(slots)`` = 2 x slots, then ``<queue>`` with a prefetch of slots
(fair dispatch, as before). A delivery goes straight into a free slot; with none free it waits
here, and the next slot to free takes the oldest urgent one, else the oldest normal one.

So a worker holds at most ``slots`` normal tasks it has not started, and only while urgent ones
run in their slots; and while urgent tasks wait in the broker, every slot that frees finds one
already in hand: the broker sends its replacement while the next one runs. (With slots + 1,
slots that free together, as tasks of one length started together do, found one for the
first slot only and the others took a normal task: 20 of them at 4 workers x 4 slots in
bench/priority.py, 0 with 2 x slots.) The price: a busy worker may hold up to 2 x slots urgent
tasks that another worker's free slot could start; each waits until one of this worker's slots
frees, up to one task's time.

A normal task held while urgent ones keep coming would wait as long as they do, and the
broker's consumer timeout (30 min by default) counts from its delivery, not from its start:
one held ``NORMAL_HELD_AT_MOST`` seconds goes before the urgent ones (at most one per slot that
frees), so urgency never costs a task held in hand its channel.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import pika
from pika.channel import Channel
from pika.spec import Basic

from taskqueue.broker.urgent import urgent_name

OnMessage = Callable[[Channel, Basic.Deliver, pika.BasicProperties, bytes], None]


def urgent_prefetch(slots: int) -> int:
    """The prefetch of the ``<queue>.urgent`` consumer: an urgent task in hand for each slot
    beyond the ones running (the module's docstring says why)."""
    return 2 * slots


@dataclass
class Held:
    """A delivery as pika gave it, not yet handed to a slot."""

    channel: Channel
    method: Basic.Deliver
    properties: pika.BasicProperties
    body: bytes
    since: float = 0.0  # when it was held (the lanes' clock)


NORMAL_HELD_AT_MOST = 60.0  # seconds a held normal task yields to urgent ones (see above)


class Lanes:
    """Two first-in-first-out lanes; ``take`` empties the urgent one first, but for a normal
    delivery held ``NORMAL_HELD_AT_MOST`` seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._urgent: deque[Held] = deque()
        self._normal: deque[Held] = deque()
        self._clock = clock

    def __len__(self) -> int:
        return len(self._urgent) + len(self._normal)

    @property
    def urgent(self) -> int:
        return len(self._urgent)

    def hold(self, held: Held, urgent: bool) -> None:
        held.since = self._clock()
        (self._urgent if urgent else self._normal).append(held)

    def take(self) -> Held | None:
        """The delivery a free slot runs next: the oldest urgent one, else the oldest normal;
        but a normal one held too long first."""
        if self._normal and self._clock() - self._normal[0].since >= NORMAL_HELD_AT_MOST:
            return self._normal.popleft()
        for lane in (self._urgent, self._normal):
            if lane:
                return lane.popleft()
        return None

    def give_back(self) -> int:
        """Paused or stopping: every waiting delivery back to its queue (none was started), on
        its channel if that is still open (a closed one gave them back already)."""
        count = 0
        while (held := self.take()) is not None:
            if held.channel.is_open:
                held.channel.basic_nack(held.method.delivery_tag, requeue=True)
                count += 1
        return count

    def drop(self) -> None:
        """The channel is gone: the broker delivers them again; nobody can ack them now."""
        self._urgent.clear()
        self._normal.clear()


class Intake:
    """The worker's two subscriptions on its task channel, and the deliveries waiting in it.
    The consumer says when to subscribe, cancel or forget; it asks ``hold`` whether a delivery
    waits, and ``take`` for the one a free slot runs next."""

    def __init__(self, queue: str, slots: int) -> None:
        self.queue, self.urgent_queue, self.slots = queue, urgent_name(queue), slots
        self.lanes = Lanes()
        self.urgent = True  # False: no permission on <queue>.urgent (topology.py), not consumed
        self._tags: list[str] = []  # pika's: <queue>.urgent's (when consumed), then <queue>'s
        self._urgent_tag: str | None = None

    @property
    def prefetch(self) -> int:
        """The prefetch to set before ``subscribe``: the urgent consumer's, made first."""
        return urgent_prefetch(self.slots)

    def subscribe(self, channel: Channel, on_message: OnMessage) -> None:
        """A prefetch applies to the consumers made after it (per consumer): <queue>.urgent's
        is ``prefetch``, then <queue>'s is slots. The broker takes them in this order."""
        self._urgent_tag = None
        if self.urgent:
            self._urgent_tag = channel.basic_consume(self.urgent_queue, on_message)
        channel.basic_qos(prefetch_count=self.slots)
        normal_tag = channel.basic_consume(self.queue, on_message)
        self._tags = [normal_tag] if self._urgent_tag is None else [self._urgent_tag, normal_tag]

    def cancel(self, channel: Channel | None) -> int:
        """Stop both subscriptions; the deliveries waiting go back (not started: another worker
        can run them now). How many went back."""
        if channel is not None and channel.is_open:
            for tag in self._tags:
                channel.basic_cancel(tag)
        self._tags, self._urgent_tag = [], None
        return self.lanes.give_back()

    def forget(self) -> None:
        """The channel is closed or closing: the broker delivers all of them again."""
        self._tags, self._urgent_tag = [], None
        self.lanes.drop()

    def hold(self, channel: Channel, method: Basic.Deliver, properties: pika.BasicProperties,
             body: bytes) -> None:
        urgent = self._urgent_tag is not None and method.consumer_tag == self._urgent_tag
        self.lanes.hold(Held(channel, method, properties, body), urgent)

    def take(self) -> Held | None:
        return self.lanes.take()
