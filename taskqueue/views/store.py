"""What the report shows beside a run: the queue's status now (``queue_status``, passive
declares: it works during an alarm), the list of runs, and the latest one. The events file of
workers before 0.4 (``EventStore``) is results/events_file.py's.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import pika

from taskqueue.broker.blocking import open_blocking
from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.broker.depths import Depth, Refused, looks
from taskqueue.broker.urgent import urgent_retry_name
from taskqueue.results.events_file import EventStore as EventStore  # its importers of views.store
from taskqueue.views.names import worker_of
from taskqueue.wire.events import RecentIds, kind_of


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
    """(ready messages, consumers) of each queue, by passive declares (broker/depths.py, each
    channel closed again); None for a queue that does not exist or whose depth the broker
    refused to give (the views show either as unknown). Consuming-only: it works during a
    resource alarm."""
    return {name: (seen.ready, seen.consumers) if isinstance(seen, Depth) else None
            for name, seen in looks(connection, names).items()}


def queue_status(settings: BrokerSettings, spec: QueueSpec) -> str:
    """The queue and its companions (``<queue>.urgent.retry`` too) right now: messages waiting,
    and consumers. (Tasks in progress are not 'waiting': ``task_report.py --watch`` shows
    them, worker by worker.)"""
    connection = open_blocking(settings)
    try:
        seen = looks(connection, [*spec.all_queues, urgent_retry_name(spec.name)])
    finally:
        connection.close()
    lines = [f"{'queue':<40} {'waiting':>8} {'consumers':>9}"]
    for name, count in seen.items():
        if isinstance(count, Depth):
            lines.append(f"{name:<40} {count.ready:>8} {count.consumers:>9}")
        elif isinstance(count, Refused):  # there, maybe full: not "(none)"
            lines.append(f"{name:<40} {'?':>8}  (the broker refused: {count.text})")
        else:
            lines.append(f"{name:<40} {'(none)':>8}")
    return "\n".join(lines)
