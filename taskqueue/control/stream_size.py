"""How much a stream holds, as far as AMQP can tell: ``task_control.py status``.

RabbitMQ does not say a stream's size over AMQP (3.10 answers a passive declare with 0
messages; its ``rabbitmqctl list_queues message_bytes`` is empty for streams, and a stream's
segment files are on the broker's disk). What a reader can learn: the offsets of its first and
last messages (how many it holds: retention moves the first), when they were written (the
records say), and the sizes of the newest ones. The size shown is an estimate from those:
messages x (their mean body size + ``OVERHEAD``, what a message costs on disk beyond its body,
measured on 3.10: docs/operating.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import pika

from taskqueue.control.retention import show_bytes

OVERHEAD = 250  # bytes a message takes on disk beyond its body (3.10: 215-255, docs/operating.md)
SAMPLE = 200  # the newest messages whose sizes are averaged
LAST_CHUNK_SECONDS = 2.0  # reading the newest chunk (or the sample), at most
IDLE = 0.3


@dataclass
class StreamSize:
    """One stream's extent: first and last offsets, their times, the newest bodies' sizes."""

    name: str
    exists: bool = True
    first: int | None = None
    last: int | None = None
    oldest: float | None = None
    newest: float | None = None
    sizes: list[int] = field(default_factory=list)  # bodies of the newest messages

    @property
    def messages(self) -> int:
        """Offsets in the stream: its messages, and one per segment the broker adds (a
        tracking snapshot, no message: a few more than were published when segments are
        small, none to speak of at 100 MB)."""
        if self.first is None or self.last is None:
            return 0
        return self.last - self.first + 1

    @property
    def estimate(self) -> float:
        """Bytes on disk, estimated (see the module docstring)."""
        mean = sum(self.sizes) / len(self.sizes) if self.sizes else 0.0
        return self.messages * (mean + OVERHEAD)

    def line(self) -> str:
        if not self.exists:
            return f"{self.name}: does not exist (made by the first worker, or command)"
        if not self.messages:
            return f"{self.name}: empty"
        gone = f"; offsets before {self.first} removed by retention" if self.first else ""
        return (f"{self.name}: about {self.messages:,} messages (offsets {self.first:,}-"
                f"{self.last:,}), about {show_bytes(self.estimate)}, from {moment(self.oldest)} to "
                f"{moment(self.newest)}{gone}")


def moment(when: float | None) -> str:
    return "?" if not when else time.strftime("%Y-%m-%d %H:%M", time.localtime(when))


def written(body: bytes) -> float | None:
    """When a message was written, from what it holds: a results group's records ("finished"
    or "time") or a control command ("time")."""
    try:
        decoded = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    records = decoded if isinstance(decoded, list) else [decoded]
    times = [float(record.get("finished") or record.get("time") or 0)
             for record in records if isinstance(record, dict)]
    return max(times, default=0.0) or None


def _offset(properties: pika.BasicProperties) -> int | None:
    value = (properties.headers or {}).get("x-stream-offset")
    return value if isinstance(value, int) else None


def measure(connection: pika.BlockingConnection, name: str) -> StreamSize:
    """The extent of stream *name* (each read on a channel of its own)."""
    size = StreamSize(name)
    try:
        connection.channel().queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 404:
            raise
        size.exists = False
        return size
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1)
    for method, properties, body in channel.consume(name, inactivity_timeout=IDLE,
                                                    arguments={"x-stream-offset": "first"}):
        if method is not None:
            size.first, size.oldest = _offset(properties), written(body)
        break
    channel.close()
    if size.first is None:
        return size
    size.last, size.newest = _newest(connection, name)
    if size.last is not None:
        size.sizes = _sample(connection, name, max(size.first, size.last - SAMPLE + 1), size.last)
    return size


def _newest(connection: pika.BlockingConnection, name: str) -> tuple[int | None, float | None]:
    """The last offset and when it was written: a reader attached at "last" gets the newest
    chunk first."""
    last, newest = None, None
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1000)
    deadline = time.monotonic() + LAST_CHUNK_SECONDS
    for method, properties, body in channel.consume(name, inactivity_timeout=IDLE,
                                                    arguments={"x-stream-offset": "last"}):
        if method is None or time.monotonic() > deadline:
            break
        offset = _offset(properties)
        if offset is not None and (last is None or offset > last):
            last, newest = offset, written(body) or newest
        channel.basic_ack(method.delivery_tag)
    channel.close()
    return last, newest


def _sample(connection: pika.BlockingConnection, name: str, start: int, end: int) -> list[int]:
    """The body sizes of the messages from offset *start* to *end*."""
    sizes: list[int] = []
    channel = connection.channel()
    channel.basic_qos(prefetch_count=SAMPLE)
    deadline = time.monotonic() + LAST_CHUNK_SECONDS
    for method, properties, body in channel.consume(name, inactivity_timeout=IDLE,
                                                    arguments={"x-stream-offset": start}):
        if method is None or time.monotonic() > deadline:
            break
        sizes.append(len(body))
        channel.basic_ack(method.delivery_tag)
        if (_offset(properties) or 0) >= end:
            break
    channel.close()
    return sizes
