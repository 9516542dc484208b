"""Who did what: task events -> a table and a timeline picture.

Every worker publishes one small JSON event per finished attempt to ``<queue>.events`` (see
events.py). ``EventStore.collect`` moves them from the broker into
``reports/<queue>.events.jsonl`` (appended and flushed before the broker copy is acked, so
none is lost), which keeps every run for later reports. ``RunReport`` then answers the
question for one run: which worker did which task, when, and how the work was shared.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from html import escape
from pathlib import Path

import pika

from taskqueue.config import BrokerSettings, QueueSpec
from taskqueue.connection import open_blocking
from taskqueue.events import decode_events

OUTCOME_COLOURS = {"done": "#4e79a7", "failed": "#f28e2b", "dead": "#e15759"}


class EventStore:
    """The JSON-lines file of all events ever collected for one queue."""

    def __init__(self, directory: Path, queue: str) -> None:
        self.path = directory / f"{queue}.events.jsonl"

    def collect(self, settings: BrokerSettings, spec: QueueSpec) -> int:
        """Move every waiting event from the broker into the file; return how many."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = open_blocking(settings)
        moved = 0
        try:
            channel = connection.channel()
            channel.queue_declare(spec.events_name, durable=True)
            channel.basic_qos(prefetch_count=500)
            with open(self.path, "a", encoding="utf-8") as store:
                for method, _properties, body in channel.consume(
                        spec.events_name, inactivity_timeout=0.5):
                    if method is None:
                        break
                    lines = "".join(json.dumps(e) + "\n" for e in decode_events(body))
                    store.write(lines)
                    store.flush()
                    os.fsync(store.fileno())
                    channel.basic_ack(method.delivery_tag)
                    moved += lines.count("\n")
                channel.cancel()
        finally:
            connection.close()
        return moved

    def events(self) -> list[dict]:
        if not self.path.exists():
            return []
        events = []
        with open(self.path, encoding="utf-8") as store:
            for line in store:
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue  # a torn line from a crash; the rest is still good
        return events


def latest_run(events: list[dict]) -> str | None:
    """The run whose last event is the newest."""
    last: dict[str, float] = {}
    for event in events:
        run = event.get("run_id") or ""
        last[run] = max(last.get(run, 0.0), float(event.get("finished", 0)))
    return max(last, key=last.get) if last else None


@dataclass
class WorkerLine:
    worker: str
    done: int = 0
    failed: int = 0
    dead: int = 0
    busy: float = 0.0


class RunReport:
    """The events of one run, and what they say."""

    def __init__(self, events: list[dict], run_id: str, queue: str) -> None:
        self.run_id = run_id
        self.queue = queue
        self.events = sorted((e for e in events if (e.get("run_id") or "") == run_id),
                             key=lambda e: e["started"])
        self.start = min((e["started"] for e in self.events), default=0.0)
        self.end = max((e["finished"] for e in self.events), default=0.0)

    @property
    def workers(self) -> list[WorkerLine]:
        lines: dict[str, WorkerLine] = {}
        for event in self.events:
            line = lines.setdefault(event["worker"], WorkerLine(event["worker"]))
            outcome = event.get("outcome", "done")
            line.done += outcome == "done"
            line.failed += outcome == "failed"
            line.dead += outcome == "dead"
            line.busy += float(event.get("seconds", 0))
        return sorted(lines.values(), key=lambda line: line.worker)

    def table(self) -> str:
        workers = self.workers
        total_busy = sum(w.busy for w in workers) or 1.0
        done = sum(w.done for w in workers)
        out = [f"run {self.run_id or '(no run id)'} on queue {self.queue!r}: {done} tasks done "
               f"by {len(workers)} workers in {self.end - self.start:.1f} s", "",
               f"{'worker':<24} {'done':>5} {'failed':>6} {'dead':>5} {'busy s':>8} {'share':>6}"]
        out += [f"{w.worker:<24} {w.done:>5} {w.failed:>6} {w.dead:>5} {w.busy:>8.2f} "
                f"{100 * w.busy / total_busy:>5.0f}%" for w in workers]
        out += ["", f"{'row':>5}  {'task':<28} {'worker':<24} {'start s':>7} {'took s':>6}"
                    "  outcome"]
        for event in self.events:
            task = (event.get("task") or "")[:28]
            row = event.get("row") if event.get("row") is not None else "-"
            out.append(f"{row!s:>5}  {task:<28} {event['worker']:<24} "
                       f"{event['started'] - self.start:>7.2f} {event.get('seconds', 0):>6.2f}  "
                       f"{event.get('outcome', 'done')}")
        return "\n".join(out)

    def svg(self) -> str:
        """A timeline: one lane per worker, one bar per task attempt, labelled by its row."""
        names = [w.worker for w in self.workers]
        lane, left, width, top = 34, 170, 760, 50
        span = max(self.end - self.start, 1e-3)
        height = top + lane * len(names) + 40

        def x(seconds: float) -> float:
            return left + width * (seconds - self.start) / span

        parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 20}" '
                 f'height="{height}" font-family="sans-serif" font-size="12">',
                 '<rect width="100%" height="100%" fill="white"/>',
                 f'<text x="10" y="22" font-size="15">Who did what: run '
                 f'{escape(self.run_id)} on {escape(self.queue)}</text>']
        for index, name in enumerate(names):
            y = top + index * lane
            parts.append(f'<rect class="lane" x="{left}" y="{y}" width="{width}" '
                         f'height="{lane - 6}" fill="#f3f3f3"/>')
            count = sum(1 for e in self.events if e["worker"] == name and e["outcome"] == "done")
            parts.append(f'<text x="10" y="{y + lane / 2}">{escape(name[:18])} ({count})</text>')
        for event in self.events:
            y = top + names.index(event["worker"]) * lane
            x0, x1 = x(event["started"]), x(event["finished"])
            colour = OUTCOME_COLOURS.get(event.get("outcome", "done"), "#999")
            title = escape(f"row {event.get('row')}: {event.get('task', '')} "
                           f"({event.get('seconds', 0):.2f} s, {event.get('outcome')})")
            parts.append(f'<g class="task"><title>{title}</title><rect x="{x0:.1f}" y="{y + 3}" '
                         f'width="{max(x1 - x0, 1.5):.1f}" height="{lane - 12}" rx="3" '
                         f'fill="{colour}" stroke="white"/>')
            if x1 - x0 > 18:
                parts.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{y + lane / 2 + 1}" fill="white" '
                             f'text-anchor="middle">{escape(str(event.get("row", "")))}</text>')
            parts.append("</g>")
        axis_y = top + lane * len(names) + 14
        for step in range(6):
            seconds = span * step / 5
            parts.append(f'<text x="{left + width * step / 5:.1f}" y="{axis_y}" '
                         f'text-anchor="middle">{seconds:.1f} s</text>')
        for index, (outcome, colour) in enumerate(OUTCOME_COLOURS.items()):
            x_legend = left + width - 210 + index * 75
            parts.append(f'<rect x="{x_legend}" y="12" width="12" height="12" fill="{colour}"/>'
                         f'<text x="{x_legend + 16}" y="22">{outcome}</text>')
        parts.append("</svg>")
        return "\n".join(parts)



def list_runs(events: list[dict]) -> str:
    """One line per run: id, when, tasks done, workers, wall time; newest last."""
    runs: dict[str, list[dict]] = {}
    for event in events:
        runs.setdefault(event.get("run_id") or "", []).append(event)
    lines = [f"{'run':<26} {'started':<19} {'done':>6} {'workers':>7} {'seconds':>8}"]
    for run_id, run_events in sorted(runs.items(), key=lambda item: min(
            e["started"] for e in item[1])):
        start = min(e["started"] for e in run_events)
        wall = max(e["finished"] for e in run_events) - start
        done = sum(e.get("outcome") == "done" for e in run_events)
        workers = len({e["worker"] for e in run_events})
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start))
        lines.append(f"{run_id or '(none)':<26} {when:<19} {done:>6} {workers:>7} {wall:>8.1f}")
    return "\n".join(lines)


def queue_status(settings: BrokerSettings, spec: QueueSpec) -> str:
    """The queue and its companions right now: messages waiting, and consumers. (Tasks in
    progress are not 'waiting'; `rabbitmqctl list_queues name messages_unacknowledged` or the
    admin panel counts those.)"""
    connection = open_blocking(settings)
    lines = [f"{'queue':<40} {'waiting':>8} {'consumers':>9}"]
    try:
        for name, _arguments in spec.declarations():
            channel = connection.channel()
            try:
                frame = channel.queue_declare(name, passive=True)
            except pika.exceptions.ChannelClosedByBroker:
                lines.append(f"{name:<40} {'(none)':>8}")
                continue
            lines.append(f"{name:<40} {frame.method.message_count:>8} "
                         f"{frame.method.consumer_count:>9}")
            channel.close()
    finally:
        connection.close()
    return "\n".join(lines)
