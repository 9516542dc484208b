"""Who did what in one run: task events -> a table, a timeline picture, a CSV.

``RunReport`` is a ``RunTally`` (run_tally.py: the run's events read once, kept as totals) with
its three outputs: the text (report_text.py's), the picture (timeline.py's) and the CSV, which
reads the events again, as a stream.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from taskqueue.views.report_text import table_lines
from taskqueue.views.run_tally import RunTally
from taskqueue.views.timeline import svg as timeline_svg
from taskqueue.wire.events import RecentIds, kind_of


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


class RunReport(RunTally):
    """One run's tally, shown: ``table`` (text), ``svg`` (the timeline), ``write_csv`` (one
    row per settled task). The CSV and the full task list read the events again."""

    @property
    def gone(self) -> int | None:
        """Tasks of the run whose records retention removed: its start record is gone (the
        emitter writes it before the first task) while its finished record still says how
        many it published. None when nothing says so."""
        states = {run.get("state") for run in self.runs}
        published = self.published
        if "started" in states or published is None:
            return None
        return max(0, published - self.done - self.dead - self.cancelled)

    def completeness(self) -> list[str]:
        notes = super().completeness()
        gone = self.gone
        if not gone:
            return notes
        # RunTally's first note then counts the same tasks as still queued: this one says why.
        return [f"past retention: the oldest records of run {self.run_id} are gone from the "
                f"results stream (its x-max-age / x-max-length-bytes): {gone} of the "
                f"{self.published} tasks it published have no record left (fewer if some are "
                "still queued or retrying)", *notes[1:]]

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
