"""What a worker tells about itself: one results record per finished attempt (the record:
confirmed before the ack, see settlement.py; also shown to live views), its totals (the
summary line at exit, and a record), and live snapshots of its slots. ``WorkerOptions`` are the
settings a worker runs with."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from taskqueue.broker.config import DEFAULT_DELIVERY_LIMIT, DEFAULT_MAX_TASK_BYTES
from taskqueue.wire.events import event_id, task_event
from taskqueue.worker.delivery import Delivery
from taskqueue.worker.outbox import Outbox
from taskqueue.worker.slots import WorkSlot

SNAPSHOT_SECONDS = (0.5, 2.0)  # a live snapshot at most this often, and at least this often


@dataclass(frozen=True)
class WorkerOptions:
    name: str
    exit_when_idle: float | None = None
    max_retries: int = 3
    retry_delay: float = 2.0
    max_task_bytes: int = DEFAULT_MAX_TASK_BYTES
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT
    events: bool = True


@dataclass
class WorkerStats:
    done: int = 0
    failed_attempts: int = 0
    dead_lettered: int = 0
    redelivered: int = 0
    cancelled: int = 0
    skipped: int = 0  # already done (the record says so): acked unrun
    parked: int = 0  # parked by a rate limit until their turn (no attempt: rate_wait.py)
    done_by_run: Counter = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    def summary(self, name: str, slots: list[WorkSlot]) -> str:
        wall = time.monotonic() - self.started
        busy = sum(slot.busy_seconds for slot in slots)
        text = (f"worker {name}: {self.done} done, {self.failed_attempts} failed attempts, "
                f"{self.dead_lettered} dead-lettered, {self.redelivered} redelivered; busy "
                f"{busy:.1f} s, idle {max(0.0, wall * len(slots) - busy):.1f} s")
        if len(slots) > 1:
            text += " (" + ", ".join(f"{slot.name}: {slot.done}" for slot in slots) + ")"
        if self.cancelled:
            text += f"; {self.cancelled} cancelled"
        if self.skipped:
            text += f"; {self.skipped} skipped (already done)"
        if self.parked:
            text += f"; {self.parked} parked (rate limit)"
        return text


class WorkerAccount:
    """Records, events and snapshots for one worker, through its outbox (records always; live
    events and snapshots not with --no-events)."""

    def __init__(self, options: WorkerOptions, host: str, slots: list[WorkSlot],
                 outbox: Outbox) -> None:
        self.options, self.host, self.slots, self.outbox = options, host, slots, outbox
        self.stats = WorkerStats()
        self.changed, self._last_snapshot = True, 0.0  # something no snapshot has shown yet

    def beat(self, now: float, state: str, connected: bool,
             rate: Callable[[], dict | None]) -> None:
        """The consumer's beat (*now*: monotonic): a live snapshot once something changed (a
        task taken or finished, a task's fresh progress), at most every ``SNAPSHOT_SECONDS[0]``,
        and at least every ``SNAPSHOT_SECONDS[1]`` (so a view sees a worker alive)."""
        since = now - self._last_snapshot
        if any(slot.progress.fresh() for slot in self.slots):
            self.changed = True
        if (self.changed and since >= SNAPSHOT_SECONDS[0]) or since >= SNAPSHOT_SECONDS[1]:
            self.outbox.announce(self.snapshot(state, connected, rate=rate()))
            self.changed, self._last_snapshot = False, now

    def record(self, slot: WorkSlot, delivery: Delivery, outcome: str, seconds: float,
               reason: str = "", result: str | None = None) -> dict:
        """The attempt's results record (the caller has it confirmed before the ack; live views
        read it from the stream too). ``seen``: how far the worker had read the record when it
        decided to run the task (the stream offset), so a reader can check that no task ran
        after its done record was read. Under a rate limit: ``waited``, seconds from its
        receipt to its start (its turn, and the check), and ``parks``, the times it was
        parked before (the time parked is in started - queued)."""
        message_id = delivery.properties.message_id
        record = task_event(
            run_id=delivery.run_id, worker=slot.name, host=self.host,
            message_id=message_id if isinstance(message_id, str) else None, row=delivery.row,
            task=delivery.text, outcome=outcome, received=delivery.received,
            started=delivery.started or delivery.received, seconds=seconds,
            attempt=delivery.attempt,
            redelivered=delivery.redelivered, reason=reason, result=result,
            queued=delivery.queued)
        record["seen"] = delivery.seen
        if delivery.rate_waited:
            record["waited"] = round(max(0.0, (delivery.started or time.time())
                                         - delivery.received), 4)
        if delivery.parks:
            record["parks"] = delivery.parks
        progress = slot.progress.value() if slot.delivery is delivery else None
        if progress is not None:  # the attempt's last (taskqueue.progress, a progress line)
            record["progress"] = progress
        return record

    def snapshot(self, state: str, connected: bool, rate: dict | None = None) -> dict:
        """What every slot is doing now (*state*: running, paused or stopped); a slot waiting
        for its turn under a rate limit says for which key and until when (``rate_wait``);
        *rate*: the worker's rate gate's own (the limit it applies; the arbiter's busiest
        keys), shown when there is one."""
        slots = []
        for slot in self.slots:
            delivery = slot.delivery
            if delivery is None:
                slots.append({"slot": slot.name, "state": "idle", "since": slot.idle_since,
                              "done": slot.done, "failed": slot.failed})
            else:
                slots.append({"slot": slot.name, "state": "busy",
                              "since": delivery.started or delivery.received,
                              "queued": delivery.queued,
                              "row": delivery.row, "task": delivery.text[:80],
                              "run_id": delivery.run_id, "done": slot.done,
                              "failed": slot.failed})
                progress = slot.progress.for_snapshot()
                if progress is not None:
                    slots[-1]["progress"] = progress
                if slot.rate_wait is not None:
                    slots[-1]["rate_wait"] = dict(slot.rate_wait)
        snapshot = {"kind": "snapshot", "worker": self.options.name, "host": self.host,
                    "pid": os.getpid(), "time": time.time(), "state": state, "slots": slots,
                    "connected": connected}
        if rate:
            snapshot["rate"] = rate
        return snapshot

    def totals(self) -> None:
        """At exit: what this worker did, per run (the report checks its counts with it), and
        a last snapshot saying it stopped."""
        stats = self.stats
        self.outbox.record_result({
            "kind": "worker", "id": event_id(), "worker": self.options.name,
            "host": self.host, "pid": os.getpid(), "time": time.time(),
            "done": stats.done, "failed": stats.failed_attempts,
            "dead": stats.dead_lettered, "runs": dict(stats.done_by_run),
            "skipped": stats.skipped, **({"parked": stats.parked} if stats.parked else {})})
        if self.options.events:
            self.outbox.announce(self.snapshot("stopped", connected=False))
