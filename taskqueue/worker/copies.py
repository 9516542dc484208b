"""What the outbox publishes with confirms before a task may be acked: a copy of the task to
another queue (``.retry``/``.dead``), and a group of results records to the stream."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pika


@dataclass
class Copy:
    """A message to put in another queue before its original may be acked."""

    routing_key: str
    body: bytes
    properties: pika.BasicProperties
    on_settled: Callable[[bool], None]  # True: the broker has it; False: refused or unroutable
    cancelled: bool = False  # the original went back to the queue: the copy is not needed
    returns: int = 0  # times the broker returned it (no queue to route to)


@dataclass
class RecordGroup:
    """Records published together to the results stream; each may have a callback, told
    True once the broker has them, False if it would not take them."""

    items: list[tuple[dict, Callable[[bool], None] | None]]
    routing_key: str = ""
    returns: int = 0
    cancelled: bool = False  # never: a record says what happened, it is always sent
    properties: pika.BasicProperties = field(default_factory=lambda: pika.BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json"))

    def settle(self, ok: bool) -> None:
        for _record, callback in self.items:
            if callback is not None:
                callback(ok)
