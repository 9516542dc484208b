"""What the live view knows and how it looks: events in, a screen (or one plain line) out.

``LiveState`` is fed the events a view receives (workers' snapshots and finished tasks, the
emitters' run announcements) and the queue counts it asks the broker for; ``screen()`` draws
the terminal view, ``line()`` the one-line form for logs and pipes. Pure logic: no broker here
(watch.py does the I/O), so it is tested with made-up events.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

GONE_AFTER = 6.0  # seconds without a snapshot before a worker counts as gone
RATE_WINDOW = 10.0  # the rate is over the last this many seconds
RECENT_FAILURES = 5
SEEN_IDS = 50_000  # event ids remembered to drop a resent copy (resends come soon after)


class RecentIds:
    """Membership of the last *size* ids added: memory stays bounded however long the view
    runs. A duplicate is a batch sent again after a reconnect, so it arrives soon after the
    original, well inside the window."""

    def __init__(self, size: int = SEEN_IDS) -> None:
        self._order: deque = deque()
        self._ids: set = set()
        self._size = size

    def __contains__(self, item: object) -> bool:
        return item in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, item: object) -> None:
        if item in self._ids:
            return
        self._ids.add(item)
        self._order.append(item)
        if len(self._order) > self._size:
            self._ids.discard(self._order.popleft())

    def clear(self) -> None:
        self._order.clear()
        self._ids.clear()


@dataclass
class QueueCounts:
    ready: int | None = None
    retry: int | None = None
    dead: int | None = None
    consumers: int | None = None


@dataclass
class SlotView:
    slot: str
    worker: str
    host: str
    state: str  # busy, idle, stopped
    since: float
    row: object = None
    task: str = ""
    done: int = 0
    failed: int = 0
    heard: float = 0.0  # when its worker's last snapshot came


@dataclass
class LiveState:
    queue: str
    started: float = field(default_factory=time.time)
    counts: QueueCounts = field(default_factory=QueueCounts)
    slots: dict[str, SlotView] = field(default_factory=dict)
    run_id: str = ""
    total: int | None = None
    done: int = 0
    failed: int = 0
    dead: int = 0
    finished_at: deque = field(default_factory=lambda: deque(maxlen=100_000))
    failures: deque = field(default_factory=lambda: deque(maxlen=RECENT_FAILURES))
    _seen: RecentIds = field(default_factory=RecentIds)
    _latest_start: float = 0.0  # of the current run's tasks: older runs' stragglers start before

    # --- feeding ---------------------------------------------------------------------------
    def feed(self, event: dict) -> None:
        kind = event.get("kind") or "task"
        if kind == "snapshot":
            self._snapshot(event)
        elif kind == "task":
            self._task(event)
        elif kind == "run":
            self._run(event)

    def _snapshot(self, event: dict) -> None:
        stopped = event.get("state") == "stopped"
        for slot in event.get("slots") or []:
            self.slots[slot["slot"]] = SlotView(
                slot["slot"], event.get("worker", ""), event.get("host", ""),
                "stopped" if stopped else slot.get("state", "idle"),
                float(slot.get("since") or event.get("time") or 0), slot.get("row"),
                slot.get("task") or "", int(slot.get("done") or 0),
                int(slot.get("failed") or 0), float(event.get("time") or time.time()))

    def _switch_run(self, run_id: str, when: float) -> None:
        self.run_id, self.total, self._latest_start = run_id, None, when
        self.done = self.failed = self.dead = 0
        self._seen.clear()  # ids are per run: another run's events are not counted anyway

    def _run(self, event: dict) -> None:
        if event.get("run_id") != self.run_id:
            if event.get("state") != "started":
                return  # the end of a run we are not showing
            self._switch_run(event.get("run_id") or "", float(event.get("time") or 0))
        if event.get("state") == "started" and event.get("total") is not None:
            self.total = int(event["total"])
        elif event.get("state") == "finished":
            self.total = int(event.get("published") or 0)

    def _task(self, event: dict) -> None:
        if event.get("id") in self._seen:
            return  # sent twice after a reconnect
        run_id, started = event.get("run_id") or "", float(event.get("started") or 0)
        if run_id != self.run_id:
            if started < self._latest_start:
                return  # a straggler of an older run
            self._switch_run(run_id, started)
        self._seen.add(event.get("id"))
        self._latest_start = max(self._latest_start, started)
        outcome = event.get("outcome")
        finished = float(event.get("finished") or time.time())
        if outcome == "done":
            self.done += 1
            self.finished_at.append(finished)
        else:
            self.failed += outcome == "failed"
            self.dead += outcome == "dead"
            self.failures.append((finished, event.get("worker", ""), event.get("row"),
                                  event.get("task") or "", outcome, event.get("reason") or ""))

    # --- reading -------------------------------------------------------------------------
    def slot_state(self, slot: SlotView, now: float) -> str:
        if slot.state == "stopped":
            return "stopped"
        if now - slot.heard > GONE_AFTER:
            return f"gone (not heard from for {now - slot.heard:.0f} s)"
        if slot.state == "busy":
            row = f"row {slot.row}" if slot.row is not None else "a task"
            return f'busy on {row} "{slot.task[:40]}" for {max(0.0, now - slot.since):.0f} s'
        return f"idle for {max(0.0, now - slot.since):.0f} s"

    def active(self, slot: SlotView, now: float) -> bool:
        return slot.state != "stopped" and now - slot.heard <= GONE_AFTER

    def in_progress(self, now: float) -> int:
        return sum(1 for slot in self.slots.values()
                   if slot.state == "busy" and self.active(slot, now))

    def rate(self, now: float) -> float:
        window = min(RATE_WINDOW, max(1.0, now - self.started))
        return sum(1 for t in self.finished_at if now - t <= window) / window

    def eta(self, now: float) -> float | None:
        rate = self.rate(now)
        if self.total is not None:
            left = max(0, self.total - self.done - self.dead)
        elif self.counts.ready is not None:
            left = self.counts.ready + (self.counts.retry or 0) + self.in_progress(now)
        else:
            return None
        if left == 0:
            return 0.0 if self.done + self.dead else None
        return left / rate if rate > 0 else None

    def all_done(self, now: float) -> bool:
        """Nothing waiting, nothing retrying, no slot busy, and some work was seen."""
        counts = self.counts
        if counts.ready is None or counts.ready or counts.retry:
            return False
        if any(slot.state == "busy" and self.active(slot, now) for slot in self.slots.values()):
            return False
        if self.total is not None:
            return self.done + self.dead >= self.total
        return self.done + self.dead > 0

    # --- drawing -----------------------------------------------------------------------
    def _progress(self, now: float) -> str:
        total = f"/{self.total}" if self.total is not None else ""
        eta = self.eta(now)
        eta_text = "?" if eta is None else f"{eta:.0f} s"
        return (f"done {self.done}{total}, failed attempts {self.failed}, dead {self.dead}, "
                f"{self.rate(now):.1f} tasks/s, ETA {eta_text}")

    def _queue_text(self, now: float) -> str:
        def show(value: int | None) -> str:
            return "?" if value is None else str(value)

        c = self.counts
        return (f"ready {show(c.ready)}, in progress {self.in_progress(now)}, retrying "
                f"{show(c.retry)}, dead {show(c.dead)}, consumers {show(c.consumers)}")

    def screen(self, now: float | None = None, width: int = 100) -> list[str]:
        now = time.time() if now is None else now
        done_total = sum(slot.done for slot in self.slots.values()) or 1
        lines = [f"queue {self.queue!r}: {self._queue_text(now)}",
                 f"run {self.run_id or '-'}: {self._progress(now)}", "",
                 f"{'worker':<22} {'host':<14} {'state':<50} {'done':>5} {'failed':>6} "
                 f"{'share':>5}"]
        for slot in sorted(self.slots.values(), key=lambda s: s.slot):
            lines.append(f"{slot.slot:<22.22} {slot.host:<14.14} "
                         f"{self.slot_state(slot, now):<50.50} {slot.done:>5} {slot.failed:>6} "
                         f"{100 * slot.done / done_total:>4.0f}%")
        if not self.slots:
            lines.append("(no worker heard from yet: start listening_worker.py)")
        lines += ["", "last failures:" if self.failures else "last failures: none"]
        for when, worker, row, task, outcome, reason in self.failures:
            clock = time.strftime("%H:%M:%S", time.localtime(when))
            lines.append(f"  {clock} {worker} row {row} {task[:30]!r}: {outcome} ({reason})")
        lines += ["", f"updated {time.strftime('%H:%M:%S', time.localtime(now))}   "
                      "(Ctrl+C to leave)"]
        return [line[:width] for line in lines]

    def line(self, now: float | None = None) -> str:
        """One plain line: for logs, pipes and CI (no escape codes)."""
        now = time.time() if now is None else now
        workers = ", ".join(
            f"{slot.slot} " + ("busy row " + str(slot.row) if slot.state == "busy"
                               and self.active(slot, now) else
                               "idle" if self.active(slot, now) else
                               "stopped" if slot.state == "stopped" else "gone")
            for slot in sorted(self.slots.values(), key=lambda s: s.slot)) or "none yet"
        clock = time.strftime("%H:%M:%S", time.localtime(now))
        return (f"{clock} queue {self.queue!r}: {self._queue_text(now)} | {self._progress(now)}"
                f" | workers: {workers}")
