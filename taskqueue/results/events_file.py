"""The events of a queue as workers before 0.4 sent them, kept: ``EventStore.collect`` moves
them from the broker's ``<queue>.events`` queue into ``reports/<queue>.events.jsonl`` (appended
and flushed before the broker copy is acked, so none is lost), which keeps every run for later
reports. It is read as a stream (``events()``), so no run is ever held in memory whole. The
results history (history.py) reads it beside the results stream; the report collects it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pika

from taskqueue.broker.blocking import open_blocking
from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.wire.events import decode_events, kind_of


class EventStore:
    """The JSON-lines file of all events ever collected for one queue, read as a stream."""

    def __init__(self, directory: Path, queue: str) -> None:
        self.path = directory / f"{queue}.events.jsonl"

    def collect(self, settings: BrokerSettings, spec: QueueSpec) -> Counter:
        """Move every waiting event from the broker into the file; return how many of each
        kind. Works during a resource alarm too: it only consumes."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = open_blocking(settings)
        moved: Counter = Counter()
        try:
            channel = connection.channel()
            try:
                channel.queue_declare(spec.events_name, passive=True)
            except pika.exceptions.ChannelClosedByBroker:
                return moved  # no worker has made it yet: nothing to collect
            channel.basic_qos(prefetch_count=500)
            with open(self.path, "a", encoding="utf-8") as store:
                for method, _properties, body in channel.consume(
                        spec.events_name, inactivity_timeout=0.5):
                    if method is None:
                        break
                    events = [e for e in decode_events(body) if e.get("kind") != "snapshot"]
                    store.write("".join(json.dumps(e, ensure_ascii=False) + "\n"
                                        for e in events))
                    store.flush()
                    os.fsync(store.fileno())
                    channel.basic_ack(method.delivery_tag)
                    moved.update(kind_of(event) for event in events)
                channel.cancel()
        finally:
            connection.close()
        return moved

    def events(self) -> Iterator[dict]:
        """Every stored event, oldest first, one at a time (the file may hold many runs)."""
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as store:
            for line in store:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # a torn line from a crash; the rest is still good
                if isinstance(event, dict):
                    yield event
