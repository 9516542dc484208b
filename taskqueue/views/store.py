"""The events of a queue, kept: ``EventStore.collect`` moves them from the broker's
``<queue>.events`` into ``reports/<queue>.events.jsonl`` (appended and flushed before the
broker copy is acked, so none is lost), which keeps every run for later reports. It is read as
a stream (``events()``), so no run is ever held in memory whole. Also the queue's status now
(``queue_status``, passive declares: it works during an alarm) and the list of runs.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pika

from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.broker.connection import open_blocking
from taskqueue.views.names import worker_of
from taskqueue.wire.events import RecentIds, decode_events, kind_of


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


def latest_run(events: Iterable[dict]) -> str | None:
    """The run whose last task event is the newest."""
    last: dict[str, float] = {}
    for event in events:
        if kind_of(event) == "task":
            run = event.get("run_id") or ""
            last[run] = max(last.get(run, 0.0), float(event.get("finished", 0)))
    return max(last, key=last.__getitem__) if last else None



@dataclass
class RunLine:
    start: float = float("inf")
    end: float = 0.0
    done: int = 0
    workers: set = field(default_factory=set)


def list_runs(events: Iterable[dict]) -> str:
    """One line per run: id, when, tasks done, workers, wall time; newest last."""
    runs: dict[str, RunLine] = {}
    seen = RecentIds()
    for event in events:
        if kind_of(event) != "task" or event.get("id") in seen:
            continue
        seen.add(event.get("id"))
        line = runs.setdefault(event.get("run_id") or "", RunLine())
        line.start = min(line.start, event["started"])
        line.end = max(line.end, event["finished"])
        line.done += event.get("outcome") == "done"
        line.workers.add(worker_of(event["worker"]))
    lines = [f"{'run':<26} {'started':<19} {'done':>6} {'workers':>7} {'seconds':>8}"]
    for run_id, line in sorted(runs.items(), key=lambda item: item[1].start):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(line.start))
        lines.append(f"{run_id or '(none)':<26} {when:<19} {line.done:>6} "
                     f"{len(line.workers):>7} {line.end - line.start:>8.1f}")
    return "\n".join(lines)


def passive_counts(connection: pika.BlockingConnection,
                   names: list[str]) -> dict[str, tuple[int, int] | None]:
    """(ready messages, consumers) of each queue, by passive declares; None for a queue that
    does not exist. Consuming-only: it works during a resource alarm."""
    counts: dict[str, tuple[int, int] | None] = {}
    for name in names:
        channel = connection.channel()
        try:
            frame = channel.queue_declare(name, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            counts[name] = None  # the 404 closed the channel
            continue
        counts[name] = (frame.method.message_count, frame.method.consumer_count)
        channel.close()
    return counts


def queue_status(settings: BrokerSettings, spec: QueueSpec) -> str:
    """The queue and its companions right now: messages waiting, and consumers. (Tasks in
    progress are not 'waiting': ``task_report.py --watch`` shows them, worker by worker.)"""
    connection = open_blocking(settings)
    try:
        counts = passive_counts(connection, spec.all_queues)
    finally:
        connection.close()
    lines = [f"{'queue':<40} {'waiting':>8} {'consumers':>9}"]
    for name, count in counts.items():
        lines.append(f"{name:<40} {'(none)':>8}" if count is None else
                     f"{name:<40} {count[0]:>8} {count[1]:>9}")
    return "\n".join(lines)
