"""Wait for a run's outcomes: ``emitter_of_tasks.py --wait`` and ``Run.wait()``.

``OutcomeWaiter`` follows the results stream from where the run began and counts, per row, the
tasks that reached a final outcome (done, dead, cancelled), until every row the emitter
published has one (a bit per row: flat memory), the caller's time is up, or it is asked to stop.
The tasks never depend on it: stop waiting, and the workers go on; the record keeps what they
produce for any later reader. A *watch* sees the count after each record: ``--halt-after``
(emitter/halt.py) cancels the rest of the run from there, and the waiting goes on until the
cancelled tasks are counted too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.results.reader import RecordReader
from taskqueue.wire.record import FINAL, kind_of, run_began

PROGRESS_SECONDS = 5.0


@dataclass
class Outcomes:
    """How far a run is: tasks by final outcome, of how many expected."""

    expected: int
    done: int = 0
    dead: int = 0
    cancelled: int = 0
    stopped: bool = False  # the caller stopped waiting (Ctrl+C) or its time ran out
    halted: str = ""  # why the rest of the run was cancelled (--halt-after); "" if it was not
    started: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> int:
        return self.done + self.dead + self.cancelled

    @property
    def complete(self) -> bool:
        return self.finished >= self.expected

    def line(self) -> str:
        return (f"{self.finished} of {self.expected} tasks have an outcome ({self.done} done, "
                f"{self.dead} dead, {self.cancelled} cancelled), "
                f"{time.monotonic() - self.started:.0f} s")


class OutcomeWaiter:
    """Follow *run_id*'s records until each row in *rows* (bit per row) has a final one."""

    def __init__(self, settings: BrokerSettings, spec: QueueSpec, run_id: str,
                 rows: bytearray, expected: int) -> None:
        self.settings, self.spec, self.run_id = settings, spec, run_id
        self.rows, self.outcomes = rows, Outcomes(expected)
        self._final = bytearray(len(rows))

    def wait(self, timeout: float | None = None, should_stop: Callable[[], bool] = lambda: False,
             progress: Callable[[Outcomes], None] | None = None,
             watch: Callable[[Outcomes], None] | None = None) -> Outcomes:
        """Follow the record until every awaited row has its outcome (or *timeout*, or
        *should_stop*); *progress* every few seconds, *watch* after each record of the run."""
        outcomes = self.outcomes
        deadline = None if timeout is None else time.monotonic() + timeout
        last_said = time.monotonic()
        if outcomes.complete:
            return outcomes
        reader = RecordReader(self.settings, self.spec, idle=0.5)
        for record in reader.follow(run_began(self.run_id)):
            if record is not None and self._count(record) and watch is not None:
                watch(outcomes)
            now = time.monotonic()
            if outcomes.complete:
                break
            if should_stop() or (deadline is not None and now >= deadline):
                outcomes.stopped = True
                break
            if progress is not None and now - last_said >= PROGRESS_SECONDS:
                progress(outcomes)
                last_said = now
        return outcomes

    def _count(self, record: dict) -> bool:
        """Count *record* if it is an awaited row's first final outcome; True if it was."""
        if kind_of(record) != "task" or (record.get("run_id") or "") != self.run_id:
            return False
        outcome, row = record.get("outcome"), record.get("row")
        if outcome not in FINAL or not isinstance(row, int) or not 0 <= row < len(self.rows):
            return False
        if not self.rows[row] or self._final[row]:
            return False  # not one we wait for, or counted already (it ran twice)
        self._final[row] = 1
        setattr(self.outcomes, outcome, getattr(self.outcomes, outcome) + 1)
        return True
