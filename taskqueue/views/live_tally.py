"""What the live view knows: events in, the queue's, the run's and each slot's state out.

``LiveTally`` is fed the events a view receives (workers' snapshots and finished tasks, the
emitters' run announcements) and the queue counts it asks the broker for, and answers what the
views show (a slot's state, the rate, the ETA, whether all is done). Pure logic: no broker here
(watch.py and web/feed.py do the I/O), no drawing (live_screen.py, web/snapshot.py), so it is
tested with made-up events.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from taskqueue.views.live_rate import RateReports, RateWait
from taskqueue.views.terminal import terminal_text
from taskqueue.wire.events import RecentIds
from taskqueue.wire.progress import read_progress

GONE_AFTER = 6.0  # seconds without a snapshot before a worker counts as gone
RATE_WINDOW = 10.0  # the rate is over the last this many seconds
RECENT_FAILURES = 5


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
    paused: bool = False  # its worker is paused (task_control.py pause)
    progress: tuple[float, str] | None = None  # the task's latest (fraction, note), if told
    rate_wait: RateWait | None = None  # its task waits for its turn under the rate limit


@dataclass
class LiveTally:
    queue: str
    started: float = field(default_factory=time.time)
    counts: QueueCounts = field(default_factory=QueueCounts)
    slots: dict[str, SlotView] = field(default_factory=dict)
    run_id: str = ""
    total: int | None = None
    done: int = 0
    failed: int = 0
    dead: int = 0
    cancelled: int = 0
    finished_at: deque = field(default_factory=lambda: deque(maxlen=100_000))
    failures: deque = field(default_factory=lambda: deque(maxlen=RECENT_FAILURES))
    _seen: RecentIds = field(default_factory=RecentIds)
    last_wait: tuple[float, float] | None = None  # (started, seconds it had waited) of the
    #                                               newest task taken: the queue's latency
    _seconds: tuple[float, int] = (0.0, 0)  # the run's task seconds and attempts so far
    _latest_start: float = 0.0  # of the current run's tasks: older runs' stragglers start before
    gone_after: float = GONE_AFTER  # the web view says "gone" sooner (two snapshot intervals)
    rates: RateReports = field(default_factory=RateReports)  # the limit each worker applies
    parked: int | None = None  # the tasks in the rate limit's tiers (live_parked.py), if known
    parked_read: bool = False  # whoever feeds this reads the tiers: None is then "not known"
    #                            (the dashboard's feed does; a view that does not shows none)

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
        self.rates.note(event.get("worker", ""), float(event.get("time") or time.time()),
                        event.get("rate"), stopped)
        for slot in event.get("slots") or []:
            self.slots[slot["slot"]] = SlotView(
                slot["slot"], event.get("worker", ""), event.get("host", ""),
                "stopped" if stopped else slot.get("state", "idle"),
                float(slot.get("since") or event.get("time") or 0), slot.get("row"),
                slot.get("task") or "", int(slot.get("done") or 0),
                int(slot.get("failed") or 0), float(event.get("time") or time.time()),
                paused=event.get("state") == "paused",
                progress=read_progress(slot.get("progress")) if slot.get("state") == "busy"
                else None, rate_wait=RateWait.of(slot.get("rate_wait")))
            if slot.get("state") == "busy":
                self._note_wait(slot.get("since"), slot.get("queued"))

    def _note_wait(self, started: object, queued: object) -> None:
        """Latency, as Sidekiq shows it: how long the newest task taken had waited for a
        worker (the tasks still waiting were published after it: they wait at most that)."""
        if not isinstance(started, (int, float)) or not isinstance(queued, (int, float)):
            return
        if self.last_wait is None or started > self.last_wait[0]:
            self.last_wait = (float(started), max(0.0, float(started) - float(queued)))

    def mean_seconds(self) -> float | None:
        """The run's mean attempt time so far (None before the first)."""
        total, count = self._seconds
        return total / count if count else None

    def _switch_run(self, run_id: str, when: float) -> None:
        self.run_id, self.total, self._latest_start = run_id, None, when
        self.done = self.failed = self.dead = self.cancelled = 0
        self._seconds = (0.0, 0)
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
        self._note_wait(event.get("started"), event.get("queued"))
        total, count = self._seconds
        self._seconds = (total + float(event.get("seconds") or 0), count + 1)
        outcome = event.get("outcome")
        finished = float(event.get("finished") or time.time())
        if outcome == "done":
            self.done += 1
            self.finished_at.append(finished)
        elif outcome == "cancelled":
            self.cancelled += 1
        else:
            self.failed += outcome == "failed"
            self.dead += outcome == "dead"
            self.failures.append((finished, event.get("worker", ""), event.get("row"),
                                  event.get("task") or "", outcome, event.get("reason") or ""))

    def forget(self, now: float, after: float = 600.0) -> None:
        """Drop the slots of workers not heard from for *after* seconds (a long-running view
        would otherwise keep every worker that ever ran)."""
        for name in [n for n, slot in self.slots.items() if now - slot.heard > after]:
            del self.slots[name]
        self.rates.forget(now, after)

    # --- reading -------------------------------------------------------------------------
    def slot_state(self, slot: SlotView, now: float) -> str:
        if slot.state == "stopped":
            return "stopped"
        if now - slot.heard > self.gone_after:
            return f"gone (not heard from for {now - slot.heard:.0f} s)"
        if slot.rate_wait is not None:
            return slot.rate_wait.words(slot.row, now)
        if slot.state == "busy":
            row = f"row {slot.row}" if slot.row is not None else "a task"
            paused = "paused, finishing " if slot.paused else ""
            return (f'{paused}busy on {row} "{terminal_text(slot.task[:40])}" for '
                    f"{max(0.0, now - slot.since):.0f} s")
        if slot.paused:
            return "paused"
        return f"idle for {max(0.0, now - slot.since):.0f} s"

    def rate_line(self, now: float) -> str:
        """The rate limit the running workers apply, in one line ("" for none)."""
        return self.rates.line(now, self.gone_after)

    def paused(self, now: float) -> bool:
        """The queue is paused: every worker heard from says so."""
        active = [slot for slot in self.slots.values() if self.active(slot, now)]
        return bool(active) and all(slot.paused for slot in active)

    def active(self, slot: SlotView, now: float) -> bool:
        return slot.state != "stopped" and now - slot.heard <= self.gone_after

    def in_progress(self, now: float) -> int:
        return sum(1 for slot in self.slots.values()
                   if slot.state == "busy" and self.active(slot, now))

    def rate(self, now: float) -> float:
        window = min(RATE_WINDOW, max(1.0, now - self.started))
        return sum(1 for t in self.finished_at if now - t <= window) / window

    def eta(self, now: float) -> float | None:
        rate = self.rate(now)
        if self.total is not None:
            left = max(0, self.total - self.done - self.dead - self.cancelled)
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
