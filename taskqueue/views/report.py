"""Who did what in one run: task events -> a table, a timeline picture, a CSV.

``RunReport`` reads the run's events once, as a stream from the ``EventStore`` (store.py), and
keeps what they say as totals, so memory stays flat from a thousand tasks to a million: which
worker (and slot) did how much, the failures, the slowest tasks, a timeline of fixed size, and
whether the counts can be complete (the emitter says how many tasks it published; workers say
how many they did and whether they had to drop events). The text is report_text.py's, the
picture timeline.py's.
"""

from __future__ import annotations

import csv
import heapq
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from taskqueue.views.events import RecentIds
from taskqueue.views.live_screen import natural_key
from taskqueue.views.report_text import table_lines
from taskqueue.views.store import kind_of, worker_of
from taskqueue.views.timeline import BAR_LIMIT, BusyBins
from taskqueue.views.timeline import svg as timeline_svg

SMALL_RUN = 50  # tasks: up to this many, the table lists every attempt (else --tasks)
LISTED = 20  # failures and dead-lettered tasks listed in a big run's table


@dataclass
class WorkerLine:
    """A worker's (or one slot's) totals in the run."""

    worker: str
    done: int = 0
    failed: int = 0
    dead: int = 0
    busy: float = 0.0
    slots: int = 1
    cancelled: int = 0


@dataclass
class TaskLine:
    """One task as the CSV shows it: its settling attempt (done or dead), and which it was."""

    row: object
    task: str
    worker: str
    host: str
    started: float
    seconds: float
    attempts: int
    outcome: str
    result: str


class TaskSet:
    """Which tasks of a run were seen: one bit per row (a million rows: 125 KB), and a set of
    hashes only for tasks without a row number (rare: not from the emitter)."""

    def __init__(self) -> None:
        self._bits = bytearray()
        self._others: set[int] = set()
        self._count = 0

    def add(self, event: dict) -> None:
        row = event.get("row")
        if isinstance(row, int) and 0 <= row < 1 << 31:
            byte, bit = divmod(row, 8)
            if byte >= len(self._bits):
                self._bits.extend(bytes(max(byte + 1 - len(self._bits), len(self._bits))))
            if not self._bits[byte] & (1 << bit):
                self._bits[byte] |= 1 << bit
                self._count += 1
            return
        key = hash(event.get("message_id") or f"{row}:{event.get('task')}")
        if key not in self._others:
            self._others.add(key)
            self._count += 1

    def __len__(self) -> int:
        return self._count


class RunReport:
    """The events of one run, read once as a stream: what they say is kept as totals (per
    slot, per worker), the attempts of a small run, the first failures, the slowest tasks and
    a timeline of fixed size, so memory stays flat from a thousand tasks to a million. The
    CSV (``write_csv``) and the full task list (``attempt_lines``) read the events again."""

    def __init__(self, events: Iterable[dict], run_id: str, queue: str) -> None:
        self.run_id, self.queue = run_id, queue
        self.runs: list[dict] = []
        self.worker_totals: dict[str, dict] = {}
        self.slot_lines: dict[str, WorkerLine] = {}
        self.attempts = 0
        self.start, self.end = float("inf"), 0.0
        self.small: list[dict] | None = []  # every attempt, while the run is small
        self.failures: list[dict] = []  # the first LISTED failed or dead attempts
        self.failures_count = 0
        self.slowest: list[tuple[float, int, dict]] = []  # a heap of the ten slowest done
        self.bins = BusyBins()
        self._done_tasks = TaskSet()  # distinct tasks, in a bit per row
        self._dead_tasks = TaskSet()
        self._cancelled_tasks = TaskSet()
        seen = RecentIds()
        for event in events:
            kind = kind_of(event)
            if kind == "worker":
                if run_id in (event.get("runs") or {}):
                    self.worker_totals[event["worker"]] = event
            elif (event.get("run_id") or "") != run_id:
                continue
            elif kind == "run":
                self.runs.append(event)
            elif kind == "task" and event.get("id") not in seen:
                seen.add(event.get("id"))  # a batch sent again after a reconnect counts once
                self._add(event)
        if not self.attempts:
            self.start = self.end = 0.0

    def _add(self, event: dict) -> None:
        self.attempts += 1
        slot, outcome = event["worker"], event.get("outcome", "done")
        started, finished = float(event["started"]), float(event["finished"])
        seconds = float(event.get("seconds", 0))
        self.start, self.end = min(self.start, started), max(self.end, finished)
        line = self.slot_lines.get(slot) or self.slot_lines.setdefault(slot, WorkerLine(slot))
        line.done += outcome == "done"
        line.failed += outcome == "failed"
        line.dead += outcome == "dead"
        line.cancelled += outcome == "cancelled"
        line.busy += seconds
        self.bins.add(worker_of(slot), started, finished)
        if outcome == "done":
            self._done_tasks.add(event)
            entry = (seconds, self.attempts, event)
            if len(self.slowest) < 10:
                heapq.heappush(self.slowest, entry)
            elif seconds > self.slowest[0][0]:
                heapq.heapreplace(self.slowest, entry)
        elif outcome == "cancelled":
            self._cancelled_tasks.add(event)
        else:
            if outcome == "dead":
                self._dead_tasks.add(event)
            self.failures_count += 1
            if len(self.failures) < LISTED:
                self.failures.append(event)
        if self.small is not None:
            self.small.append(event)
            if len(self.small) > BAR_LIMIT:
                self.small = None  # a big run: totals and bins only

    # --- what the events say -------------------------------------------------------------------
    @property
    def done(self) -> int:
        """Distinct tasks done (a task done twice, at-least-once, counts once)."""
        return len(self._done_tasks)

    @property
    def dead(self) -> int:
        return len(self._dead_tasks)

    @property
    def cancelled(self) -> int:
        """Tasks acked unrun, or stopped, because their run was cancelled (task_control.py)."""
        return len(self._cancelled_tasks)

    @property
    def slots(self) -> list[WorkerLine]:
        return sorted(self.slot_lines.values(), key=lambda line: natural_key(line.worker))

    @property
    def workers(self) -> list[WorkerLine]:
        """One line per worker, its slots added up."""
        lines: dict[str, WorkerLine] = {}
        for slot in self.slots:
            name = worker_of(slot.worker)
            line = lines.get(name)
            if line is None:
                lines[name] = WorkerLine(name, slot.done, slot.failed, slot.dead, slot.busy,
                                         cancelled=slot.cancelled)
            else:
                line.done += slot.done
                line.failed += slot.failed
                line.dead += slot.dead
                line.busy += slot.busy
                line.cancelled += slot.cancelled
                line.slots += 1
        return list(lines.values())

    @property
    def published(self) -> int | None:
        """How many tasks the emitter says this run published (None if it did not say)."""
        finished = {run.get("id"): run for run in self.runs if run.get("state") == "finished"}
        # One announcement per emitter that worked on the run (--resume goes on with it).
        return sum(int(run.get("published") or 0) for run in finished.values()) \
            if finished else None

    def completeness(self) -> list[str]:
        """What the counts may be missing, in words; empty when they are complete."""
        notes = []
        done, dead, cancelled = self.done, self.dead, self.cancelled
        published = self.published
        if published is not None and done + dead + cancelled < published:
            shown = f"{done} done and {dead} dead-lettered" + (
                f" and {cancelled} cancelled" if cancelled else "")
            notes.append(
                f"incomplete: {published} tasks published, the record shows {shown}; the "
                f"other {published - done - dead - cancelled} are still queued, in hand or "
                "retrying (or were done by workers older than 0.4 whose events did not "
                "arrive)")
        seen_by_worker = {line.worker: line.done for line in self.workers}
        for worker, totals in sorted(self.worker_totals.items(),
                                     key=lambda item: natural_key(item[0])):
            said = int((totals.get("runs") or {}).get(self.run_id, 0))
            seen = seen_by_worker.get(worker, 0)
            if said > seen:
                notes.append(f"incomplete: worker {worker} says it did {said} tasks of this run, "
                             f"the record shows {seen}")
            if totals.get("events_dropped"):
                notes.append(f"incomplete: worker {worker} had to drop "
                             f"{totals['events_dropped']} events (broker away or blocking)")
        return notes

    # --- what it shows ---------------------------------------------------------------------------
    def table(self, attempts: Iterable[dict] | None = None) -> str:
        """The text report; *attempts* (the events again) lists every attempt of a big run."""
        return "\n".join(table_lines(self, attempts))

    def svg(self) -> str:
        slots = self.slots
        small = self.small is not None and len(slots) <= 60
        if small:
            lanes = [(line.worker, line.worker, line.done) for line in slots]
        else:
            lanes = [(line.worker, f"{line.worker} x{line.slots}" if line.slots > 1 else
                      line.worker, line.done) for line in self.workers]
        slots_of = {line.worker: line.slots for line in self.workers}
        return timeline_svg(f"Who did what: run {self.run_id} on {self.queue}", self.start,
                            self.end, lanes, self.small if small else None,
                            None if small else self.bins, slots_of)

    def write_csv(self, path: Path, events: Iterable[dict]) -> int:
        """One row per settled task of the run (its done or dead attempt), streamed from
        *events* (read again); returns how many."""
        count = 0
        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["row", "task", "worker", "host", "started", "seconds", "attempts",
                             "outcome", "result_or_error"])
            for line in task_lines(events, self.run_id):
                started = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(line.started))
                writer.writerow([line.row, line.task, line.worker, line.host, started,
                                 f"{line.seconds:.3f}", line.attempts, line.outcome, line.result])
                count += 1
        return count


def run_attempts(events: Iterable[dict], run_id: str) -> Iterator[dict]:
    """The run's task events, each once (a batch sent again after a reconnect is skipped)."""
    seen = RecentIds()
    for event in events:
        if kind_of(event) == "task" and (event.get("run_id") or "") == run_id \
                and event.get("id") not in seen:
            seen.add(event.get("id"))
            yield event


def task_lines(events: Iterable[dict], run_id: str) -> Iterator[TaskLine]:
    """The run's settled tasks, as a stream: one line per done, dead or cancelled attempt."""
    for event in run_attempts(events, run_id):
        outcome = event.get("outcome", "done")
        if outcome not in ("done", "dead", "cancelled"):
            continue
        text = event.get("result") if outcome == "done" else event.get("reason")
        yield TaskLine(event.get("row") if event.get("row") is not None else "-",
                       event.get("task") or "", event["worker"], event.get("host") or "",
                       float(event["started"]), float(event.get("seconds", 0)),
                       int(event.get("attempt") or 1), outcome, text or "")
