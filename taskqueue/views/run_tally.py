"""What one run's events say, kept as totals: ``RunTally`` reads them once, as a stream, so
memory stays flat from a thousand tasks to a million: which worker (and slot) did how much, the
failures, the slowest tasks, a timeline of fixed size, and whether the counts can be complete
(the emitter says how many tasks it published; workers say how many they did and whether they
had to drop events). No text here: report_text.py writes it, report.py puts the two together.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass

from taskqueue.views.names import natural_key, worker_of
from taskqueue.views.timeline import BAR_LIMIT, BusyBins
from taskqueue.wire.events import RecentIds, kind_of

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


class RunTally:
    """The events of one run, read once as a stream: what they say is kept as totals (per
    slot, per worker), the attempts of a small run, the first failures, the slowest tasks and
    a timeline of fixed size, so memory stays flat from a thousand tasks to a million."""

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
