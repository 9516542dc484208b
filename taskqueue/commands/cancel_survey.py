"""What a cancel touches: the tasks of a run it selects, each with its state, from the run's
record (the results stream: done, dead or cancelled already; failed and waiting for its retry)
and the workers' live snapshots (running now); a task in neither is queued. Read by
``task_control.py cancel --dry-run`` (nothing is sent), and after a cancel is given, to say
which of the tasks it selects were over already (nothing changes for those).

A queued task's text is in no record until a worker takes it: ``--match`` finds, here, only
the tasks that ran or run; the workers test every task they take.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.control.commands import busy_slots
from taskqueue.control.state import Selection
from taskqueue.results.reader import RecordReader
from taskqueue.wire.record import FINAL, kind_of, run_began

SHOWN = 50  # task lines printed at most; the counts cover them all
OVER = (*FINAL, "skipped")  # skipped: a copy of a task done already
WHAT_HAPPENS = {"running": "stopped", "queued": "acked unrun when a worker takes it",
                "over": "nothing changes"}


@dataclass
class SelectedTask:
    """One task the cancel selects, and what it is doing."""

    row: int | None
    message_id: str | None
    text: str = ""
    state: str = "queued"  # queued, running, over
    detail: str = ""  # "done already", "on w1/2", "no record yet"
    failed: int = 0  # failed attempts recorded (queued: waiting for its retry)

    def line(self) -> str:
        name = f"row {self.row}" if self.row is not None else "no row"
        if self.message_id:
            name += f", id {self.message_id}"
        text = f": {self.text[:60]!r}" if self.text else ""
        detail = self.detail or (f"failed {self.failed} time(s), waiting for its retry"
                                 if self.failed else "")
        detail = f" ({detail})" if detail else ""
        return f"{name}{text}: {self.state}{detail}, {WHAT_HAPPENS[self.state]}"


@dataclass
class Survey:
    """The selected tasks of one run (``tasks``), and how many the run published."""

    run: str
    tasks: list[SelectedTask] = field(default_factory=list)
    published: int | None = None

    def counts(self) -> str:
        tally = Counter(task.state for task in self.tasks)
        return ", ".join(f"{tally[state]} {state} ({WHAT_HAPPENS[state]})"
                         for state in ("running", "queued", "over") if tally[state]) or "none"

    def lines(self, only: str | None = None) -> list[str]:
        chosen = [task for task in self.tasks if only in (None, task.state)]
        shown = [f"  {task.line()}" for task in chosen[:SHOWN]]
        if len(chosen) > SHOWN:
            shown.append(f"  ... and {len(chosen) - SHOWN} more")
        return shown


def survey(settings: BrokerSettings, spec: QueueSpec, run: str,
           selection: Selection | None, until: float | None = None) -> Survey:
    """The tasks of *run* that *selection* selects (None: every task of the run), as they
    were at *until* (a cancel's time: what it cancelled itself is not "over already")."""
    found = Survey(run)
    tasks: dict[object, SelectedTask] = {}
    for record in RecordReader(settings, spec).records(run_began(run)):
        if (record.get("run_id") or "") != run:
            continue
        if kind_of(record) == "run" and isinstance(record.get("published"), int):
            found.published = max(found.published or 0, record["published"])
        elif kind_of(record) == "task" and (until is None
                                            or float(record.get("finished") or 0) < until):
            _take_record(tasks, record)
    for slot in busy_slots(settings, spec):
        if slot.get("run_id") == run:
            task = tasks.setdefault(slot.get("row"), SelectedTask(slot.get("row"), None))
            task.text = task.text or str(slot.get("task") or "")
            if task.state != "over":
                task.state, task.detail = "running", f"on {slot.get('slot')}"
    if selection is not None:
        for row in selection.rows - set(tasks):
            tasks[row] = SelectedTask(row, None, detail="no record yet")
    found.tasks = sorted((task for task in tasks.values() if selection is None
                          or selection.selects(run, task.message_id, task.row, task.text)),
                         key=lambda task: (task.row is None, task.row or 0))
    return found


def _take_record(tasks: dict[object, SelectedTask], record: dict) -> None:
    """One attempt's record into its task's state (keyed by row: what snapshots name too)."""
    row = record.get("row") if isinstance(record.get("row"), int) else None
    key = row if row is not None else record.get("message_id")
    task = tasks.setdefault(key, SelectedTask(row, None))
    task.message_id = task.message_id or record.get("message_id")
    task.text = task.text or str(record.get("task") or "")
    if task.state == "over":
        return
    outcome = record.get("outcome")
    if outcome in OVER:
        task.state, task.detail = "over", f"{'done' if outcome == 'skipped' else outcome} already"
    elif outcome == "failed":
        task.failed += 1
