"""Who did what: task events -> a table and a timeline picture.

Every worker publishes one small JSON event per finished attempt to ``<queue>.events`` (see
events.py). ``EventStore.collect`` moves them from the broker into
``reports/<queue>.events.jsonl`` (appended and flushed before the broker copy is acked, so
none is lost), which keeps every run for later reports; it is read as a stream, so only one
run's events are ever in memory. ``RunReport`` then answers the question for one run: which
worker did which task, when, how the work was shared, what each task returned, and whether
the counts can be complete (the emitter says how many tasks it published; workers say how
many they did and whether they had to drop events).
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import pika

from taskqueue.config import BrokerSettings, QueueSpec
from taskqueue.connection import open_blocking
from taskqueue.events import decode_events

OUTCOME_COLOURS = {"done": "#4e79a7", "failed": "#f28e2b", "dead": "#e15759"}


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


def kind_of(event: dict) -> str:
    return event.get("kind") or "task"  # events of older workers have no kind


def latest_run(events: Iterable[dict]) -> str | None:
    """The run whose last task event is the newest."""
    last: dict[str, float] = {}
    for event in events:
        if kind_of(event) == "task":
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


@dataclass
class TaskLine:
    """One task of the run as the CSV shows it: its last attempt, and how many there were."""

    row: object
    task: str
    worker: str
    host: str
    started: float
    seconds: float
    attempts: int
    outcome: str
    result: str


class RunReport:
    """The events of one run, and what they say."""

    def __init__(self, events: Iterable[dict], run_id: str, queue: str) -> None:
        self.run_id = run_id
        self.queue = queue
        tasks: dict[str, dict] = {}
        self.runs: list[dict] = []
        self.worker_totals: dict[str, dict] = {}
        for event in events:
            kind = kind_of(event)
            if kind == "worker":
                if run_id in (event.get("runs") or {}):
                    self.worker_totals[event["worker"]] = event
                continue
            if (event.get("run_id") or "") != run_id:
                continue
            if kind == "run":
                self.runs.append(event)
            elif kind == "task":
                tasks[event.get("id") or f"old-{len(tasks)}"] = event  # a resent event counts once
        self.events = sorted(tasks.values(), key=lambda e: e["started"])
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

    @property
    def published(self) -> int | None:
        """How many tasks the emitter says this run published (None if it did not say)."""
        finished = [run for run in self.runs if run.get("state") == "finished"]
        return max(int(run.get("published") or 0) for run in finished) if finished else None

    def tasks(self) -> list[TaskLine]:
        """One line per task (message id): its final attempt."""
        by_task: dict[str, list[dict]] = {}
        for event in self.events:
            key = event.get("message_id") or f"{event.get('row')}:{event.get('task')}"
            by_task.setdefault(key, []).append(event)
        lines = []
        for attempts in by_task.values():
            last = max(attempts, key=lambda e: e["finished"])
            outcome = last.get("outcome", "done")
            text = last.get("result") if outcome == "done" else last.get("reason")
            lines.append(TaskLine(last.get("row") if last.get("row") is not None else "-",
                                  last.get("task") or "", last["worker"], last.get("host") or "",
                                  last["started"], float(last.get("seconds", 0)), len(attempts),
                                  outcome, text or ""))
        return sorted(lines, key=lambda line: (str(type(line.row)), line.row))

    def completeness(self) -> list[str]:
        """What the counts may be missing, in words; empty when they are complete."""
        notes = []
        settled = Counter(line.outcome for line in self.tasks())
        done, dead = settled["done"], settled["dead"]
        published = self.published
        if published is not None and done + dead < published:
            notes.append(
                f"incomplete: {published} tasks published, events show {done} done and {dead} "
                f"dead-lettered; the other {published - done - dead} are still queued or "
                "retrying, or were done by workers whose events did not arrive (--no-events, "
                "killed, or events dropped)")
        for worker, totals in sorted(self.worker_totals.items()):
            said = int((totals.get("runs") or {}).get(self.run_id, 0))
            seen = sum(1 for e in self.events
                       if e["worker"].split("/")[0] == worker and e.get("outcome") == "done")
            if said > seen:
                notes.append(f"incomplete: worker {worker} says it did {said} tasks of this run, "
                             f"events show {seen}")
            if totals.get("events_dropped"):
                notes.append(f"incomplete: worker {worker} had to drop "
                             f"{totals['events_dropped']} events (broker away or blocking)")
        return notes

    def table(self) -> str:
        workers = self.workers
        total_busy = sum(w.busy for w in workers) or 1.0
        done = sum(w.done for w in workers)
        out = [f"run {self.run_id or '(no run id)'} on queue {self.queue!r}: {done} tasks done "
               f"by {len(workers)} workers in {self.end - self.start:.1f} s"]
        if self.published is not None:
            out.append(f"{self.published} tasks published by the emitter")
        out += self.completeness()
        out += ["", f"{'worker':<24} {'done':>5} {'failed':>6} {'dead':>5} {'busy s':>8} "
                    f"{'share':>6}"]
        out += [f"{w.worker:<24} {w.done:>5} {w.failed:>6} {w.dead:>5} {w.busy:>8.2f} "
                f"{100 * w.busy / total_busy:>5.0f}%" for w in workers]
        out += ["", f"{'row':>5}  {'task':<28} {'worker':<24} {'start s':>7} {'took s':>6}"
                    "  outcome   result / reason"]
        for event in self.events:
            task = (event.get("task") or "")[:28].replace("\n", " ")
            row = event.get("row") if event.get("row") is not None else "-"
            note = event.get("result") or event.get("reason") or ""
            out.append(f"{row!s:>5}  {task:<28} {event['worker']:<24} "
                       f"{event['started'] - self.start:>7.2f} {event.get('seconds', 0):>6.2f}  "
                       f"{event.get('outcome', 'done'):<8}  {note[:60]}".rstrip())
        return "\n".join(out)

    def write_csv(self, path: Path) -> int:
        """One row per task of the run (its last attempt); returns how many."""
        lines = self.tasks()
        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["row", "task", "worker", "host", "started", "seconds", "attempts",
                             "outcome", "result_or_error"])
            for line in lines:
                started = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(line.started))
                writer.writerow([line.row, line.task, line.worker, line.host, started,
                                 f"{line.seconds:.3f}", line.attempts, line.outcome, line.result])
        return len(lines)

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



@dataclass
class RunLine:
    start: float = float("inf")
    end: float = 0.0
    done: int = 0
    workers: set = field(default_factory=set)
    seen: set = field(default_factory=set)


def list_runs(events: Iterable[dict]) -> str:
    """One line per run: id, when, tasks done, workers, wall time; newest last."""
    runs: dict[str, RunLine] = {}
    for event in events:
        if kind_of(event) != "task" or event.get("id") in runs.get(event.get("run_id") or "",
                                                                    RunLine()).seen:
            continue
        line = runs.setdefault(event.get("run_id") or "", RunLine())
        line.seen.add(event.get("id"))
        line.start = min(line.start, event["started"])
        line.end = max(line.end, event["finished"])
        line.done += event.get("outcome") == "done"
        line.workers.add(event["worker"])
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
