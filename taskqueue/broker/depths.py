"""How many messages wait in queues, by passive declares: what status (the tasks parked by a
rate limit), the report's queue status and the views' counts all read. Nothing is published,
so it works during a resource alarm; every channel it opens is closed again (the broker
closes the one a refusal ended), so a view reading every second keeps none open.

A passive declare answers three ways, kept apart: the queue's depth; no such queue (404,
``NOT_FOUND`` - no queue): ``None``; or a refusal (``Refused``): no permission (403), a
queue that exists but cannot serve now (a 404 that says so: a quorum queue without a
leader, see topology.py ``queue_unavailable``), an exclusive queue of another connection
(405). A refused queue is not an absent one: its messages are there, only not counted.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Union

import pika

from taskqueue.broker.topology import queue_unavailable


@dataclass(frozen=True)
class Depth:
    """A queue's ready messages and consumers, as its passive declare answered."""

    ready: int
    consumers: int


@dataclass(frozen=True)
class Refused:
    """The broker would not say (its reply code and text): the queue may well hold tasks."""

    code: int
    text: str


Look = Union[Depth, Refused, None]  # None: the queue does not exist (3.9: no | at run time)


def look(connection: pika.BlockingConnection, name: str) -> Look:
    """One queue's depth, on a channel of its own, closed again whatever the answer."""
    channel = connection.channel()
    try:
        frame = channel.queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:  # it closed the channel
        if exc.reply_code == 404 and queue_unavailable(404, exc.reply_text) is None:
            return None
        return Refused(exc.reply_code, exc.reply_text)
    with contextlib.suppress(pika.exceptions.ChannelWrongStateError):  # closed meanwhile
        channel.close()
    return Depth(frame.method.message_count, frame.method.consumer_count)


def looks(connection: pika.BlockingConnection, names: list[str]) -> dict[str, Look]:
    """``look`` at each of *names*, in order."""
    return {name: look(connection, name) for name in names}
