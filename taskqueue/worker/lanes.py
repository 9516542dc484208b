"""Deliveries that came while every slot was busy, waiting for a free slot: urgent first.

A worker consumes two queues on its task channel (consumer.py): ``<queue>.urgent`` with a
prefetch of slots + ``URGENT_HEADROOM``, then ``<queue>`` with a prefetch of slots. A delivery
goes straight into a free slot; with none free it waits here, and the next slot to free takes
the oldest urgent one, else the oldest normal one. So a worker holds at most ``slots`` normal
tasks it has not started (only while urgent ones run in their slots), and one urgent task more
than it has slots: while urgent tasks wait in the broker, a slot that frees finds one already in
hand (its replacement comes while the next one runs), instead of a normal one that came first.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import pika
from pika.channel import Channel
from pika.spec import Basic

# Urgent deliveries a worker may hold beyond its slots: one is enough for a slot that frees to
# find an urgent task in hand while the broker sends the next (a round trip, far shorter than a
# task); more would keep urgent tasks from a worker whose slot frees first.
URGENT_HEADROOM = 1


@dataclass
class Held:
    """A delivery as pika gave it, not yet handed to a slot."""

    channel: Channel
    method: Basic.Deliver
    properties: pika.BasicProperties
    body: bytes


class Lanes:
    """Two first-in-first-out lanes; ``take`` empties the urgent one first."""

    def __init__(self) -> None:
        self._urgent: deque[Held] = deque()
        self._normal: deque[Held] = deque()

    def __len__(self) -> int:
        return len(self._urgent) + len(self._normal)

    @property
    def urgent(self) -> int:
        return len(self._urgent)

    def hold(self, held: Held, urgent: bool) -> None:
        (self._urgent if urgent else self._normal).append(held)

    def take(self) -> Held | None:
        """The delivery a free slot runs next: the oldest urgent one, else the oldest normal."""
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
