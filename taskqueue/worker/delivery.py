"""A message in hand, and what we can read from it without trusting its sender.

Anyone can publish to the task queue (the tutorial's new_task.py, amqp-publish, another
client), so every header is decoded defensively: a value we cannot read makes the message
unworkable (dead-lettered with the reason), never an exception on the I/O thread.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

import pika
from pika.channel import Channel

from taskqueue.wire.keys import received_key
from taskqueue.wire.messages import (
    CHECK_FROM,
    FIRST_PUBLISH,
    PRIOR_DELIVERIES,
    RATE_LEFT,
    RATE_PARKS,
    X_KEY,
    row_of,
)
from taskqueue.wire.record import CLOCK_SKEW, run_began

N = TypeVar("N", int, float)


def header_count(headers: dict, name: str) -> int:
    """A non-negative whole-number header (0 when absent); ValueError names it otherwise."""
    number = _header_number(headers, name, int, "a whole number")
    if number < 0:
        raise ValueError(f"header {name} is negative ({number})")
    return number


def header_seconds(headers: dict, name: str) -> float:
    """A finite number of seconds (0 when absent; a negative one is 0: nothing left);
    ValueError names it otherwise."""
    number = _header_number(headers, name, float, "a number of seconds")
    if not math.isfinite(number):
        raise ValueError(f"header {name} is not a number of seconds ({number!r})")
    return max(0.0, number)


def _header_number(headers: dict, name: str, kind: Callable[[Any], N], what: str) -> N:
    """Header *name* read as *kind* (0 when absent; bytes as UTF-8 text)."""
    value = headers.get(name, 0)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"header {name} is not {what} ({value!r})") from None


@dataclass
class Delivery:
    """One delivery of one message to this worker."""

    channel: Channel
    tag: int
    properties: pika.BasicProperties
    body: bytes
    redelivered: bool
    text: str = ""
    received: float = field(default_factory=time.time)
    started: float = 0.0
    settled: bool = False  # acked, nacked or handed to the broker again: hands off
    cancelled: str = ""  # why it was stopped: cancelled while it ran (task_control.py cancel)
    seen: int | None = None  # the results stream's offset read when it was checked (tail.py)
    rate_waited: bool = False  # it waited for its turn under a rate limit (rate_wait.py)
    # Its retry stays urgent (to <queue>.urgent.retry: policy.after_work): it came through the
    # subscription to <queue>.urgent while this worker had that retry queue. Decided by the
    # intake (lanes.py ``Intake.urgent_delivery``) from where it came, never from a header.
    urgent: bool = False
    subscription: str = ""  # the consumer tag it came through (the look-ahead reads it)

    @cached_property
    def headers(self) -> dict:
        headers = self.properties.headers
        return dict(headers) if isinstance(headers, dict) else {}

    @cached_property
    def retries(self) -> int:
        """Times our workers sent it to ``<queue>.retry`` (checked by ``problem()``)."""
        return header_count(self.headers, "x-retries")

    @property
    def attempt(self) -> int:
        """This attempt's number (1 when the retry header cannot be read)."""
        try:
            return self.retries + 1
        except ValueError:
            return 1

    @cached_property
    def delivery_count(self) -> int:
        """Earlier deliveries without an ack, as a quorum queue counts them (0 elsewhere)."""
        return header_count(self.headers, "x-delivery-count")

    @cached_property
    def prior_deliveries(self) -> int:
        """Deliveries without an ack before it was parked (the park dropped the broker's
        count and carried it here, so that a task that kills its worker is still stopped)."""
        return header_count(self.headers, PRIOR_DELIVERIES)

    @property
    def deliveries(self) -> int:
        """Every earlier delivery without an ack: the broker's count and the parked ones'."""
        return self.delivery_count + self.prior_deliveries

    @cached_property
    def parks(self) -> int:
        """Times a rate limit parked it (rate_wait.py)."""
        return header_count(self.headers, RATE_PARKS)

    @cached_property
    def rate_left(self) -> float:
        """Seconds it still has to wait for its turn after the tier that brought it back."""
        return header_seconds(self.headers, RATE_LEFT)

    @property
    def key(self) -> str:
        """What a per-key rate limit counts it under (the emitter's ``--key-column``); "".
        Cut as the emitter cuts it: another producer's longer key could not be asked for."""
        return received_key(self.headers.get(X_KEY, ""))

    @property
    def queued(self) -> float | None:
        """When it was published (the message's timestamp, if its sender set one)."""
        value = self.properties.timestamp
        return float(value) if isinstance(value, int) and value > 0 else None

    @property
    def needs_check(self) -> bool:
        """Whether this delivery may be a copy of a task done already, so that the results
        record must be read before it runs: anything but the emitter's first publish of a
        row delivered for the first time (wire/messages.py). Those cannot have been done
        by anyone: the first copy of a task is always taken first (a queue is FIFO; a copy
        put back is redelivered), and a later copy is checked when it comes."""
        return (self.redelivered or self.delivery_count > 0 or self.retries > 0
                or self.properties.type != FIRST_PUBLISH or CHECK_FROM in self.headers)

    @property
    def check_from(self) -> float | None:
        """The earliest moment a done record of this task can date from (None: any): the
        failed attempt's receipt on a retry or dead copy, else its first publish (the
        emitter's), else its run's start."""
        marked = self.headers.get(CHECK_FROM)
        if isinstance(marked, (int, float)) and not isinstance(marked, bool) and marked > 0:
            return float(marked) - CLOCK_SKEW
        if self.properties.type == FIRST_PUBLISH and self.queued is not None:
            return self.queued - CLOCK_SKEW
        return run_began(self.run_id)

    @property
    def run_id(self) -> str:
        value = self.properties.correlation_id
        return value if isinstance(value, str) else ""

    @cached_property
    def label(self) -> str:
        """How log lines name the task: its row and message id."""
        message_id = self.properties.message_id
        row = row_of(message_id if isinstance(message_id, str) else None)
        where = f"row {row}" if row is not None else "no row"
        return f"{where}, id {message_id or '-'}"

    @property
    def identity(self) -> str:
        """What stays the same across its deliveries: its message id, else its body's hash."""
        message_id = self.properties.message_id
        if isinstance(message_id, str) and message_id:
            return message_id
        return "sha1:" + hashlib.sha1(self.body).hexdigest()

    @property
    def row(self) -> int | None:
        message_id = self.properties.message_id
        return row_of(message_id if isinstance(message_id, str) else None)

    def problem(self, max_bytes: int) -> str | None:
        """Why this message can never succeed, or None. Sets ``text``."""
        if not self.body:
            return "empty message"
        if len(self.body) > max_bytes:
            return f"message of {len(self.body)} bytes exceeds {max_bytes}"
        try:
            self.text = self.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"body is not UTF-8 text ({exc.reason} at byte {exc.start})"
        if not self.properties.headers:  # the usual case: nothing to read
            self.__dict__.update(headers={}, retries=0, delivery_count=0, prior_deliveries=0,
                                 parks=0, rate_left=0.0)
            return None
        try:  # each read once, so that a bad header is caught here
            for name in ("retries", "delivery_count", "prior_deliveries", "parks", "rate_left"):
                getattr(self, name)
        except ValueError as exc:
            return str(exc)
        return None


class Overruns:
    """How many times the broker took each task back from this worker for holding it longer
    than the queue's consumer timeout.

    RabbitMQ 4.3 ends such a delivery with a basic.cancel and returns the message *without*
    counting it in ``x-delivery-count``, so a task that always outlasts the timeout would run
    forever and hold up the tasks behind it. The worker counts those returns itself (per
    worker: with N workers a task may run up to N times more before it is dead-lettered), and
    the policy takes the larger of the two counts. At most ``KEPT`` tasks are remembered (the
    oldest go first)."""

    KEPT = 10_000

    def __init__(self) -> None:
        self._counts: OrderedDict[str, int] = OrderedDict()

    def add(self, delivery: Delivery) -> int:
        key = delivery.identity
        count = self._counts.pop(key, 0) + 1
        self._counts[key] = count
        while len(self._counts) > self.KEPT:
            self._counts.popitem(last=False)
        return count

    def count(self, delivery: Delivery) -> int:
        return self._counts.get(delivery.identity, 0)
