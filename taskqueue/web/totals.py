"""What the dashboard adds up from the results record as it reads it: attempts by outcome,
task durations and waits (histograms), tasks published, and a line per run. Pure: fed
records, no broker.

Tasks published: the emitter writes no record per task, only its run's notes (wire/events.py
``run_event``): "started" (published 0) and "finished" with how many it had confirmed. Each
emitter that worked on a run (``--resume`` goes on with the same run id) writes its own, so
the count is the sum, per emitter, of the largest ``published`` it said (an event id starts
with its process: wire/events.py ``event_id``). It steps up when an emitter finishes; an
emitter that also said how far it had got on the way would move it sooner, unchanged here.

Cancelled attempts are counted by outcome but are not durations: one acked unrun took no time
and one stopped half-way says nothing of how long the task takes.

Memory is flat however long the record: counters, fixed buckets (the history page's minutes
too: minutes.py), and a few numbers per run;
no task is kept (the run pages read a run's records when asked, results/history.py).
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

from taskqueue.web.minutes import MinuteHistory
from taskqueue.wire.events import RecentIds
from taskqueue.wire.record import kind_of

# Seconds: from a zero-work task to a long one (the Prometheus client's defaults stop at 10 s).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
           300.0, 600.0, 1800.0, 3600.0)
MAX_WORKERS_NAMED = 1000  # per run: how many worker names a run's line remembers


class Histogram:
    """Counts per bucket (cumulative when read) and the sum, as Prometheus wants them."""

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last: above the largest bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, how many at or below it), ending with +Inf."""
        out, running = [], 0
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), self.counts):
            running += count
            out.append((bound, running))
        return out


@dataclass
class RunLine:
    """One run as the runs page lists it (attempt counts; its page counts tasks exactly)."""

    run_id: str
    started: float = float("inf")
    finished: float = 0.0
    total: int | None = None  # rows the emitter said it would publish
    records: int = 0  # of this run, read so far
    outcomes: Counter = field(default_factory=Counter)
    workers: set = field(default_factory=set)

    def as_json(self) -> dict:
        return {"run": self.run_id, "started": None if self.started == float("inf")
                else self.started, "finished": self.finished or None, "total": self.total,
                "done": self.outcomes["done"], "failed": self.outcomes["failed"],
                "dead": self.outcomes["dead"], "cancelled": self.outcomes["cancelled"],
                "workers": len(self.workers)}


class RecordTotals:
    """Fed every record once (``add``); read by /metrics and the runs page."""

    def __init__(self) -> None:
        self.outcomes: Counter = Counter()
        self.duration = Histogram()
        self.wait = Histogram()
        self.runs: dict[str, RunLine] = {}
        self.records = 0
        self.published = 0  # tasks the emitters said they published (module docstring)
        self._published_by: dict[tuple[str, str], int] = {}  # (run, emitter) -> its largest
        self._seen = RecentIds()
        self.minutes = MinuteHistory()  # per minute, the last day: the history page

    def add(self, record: dict) -> None:
        kind = kind_of(record)
        record_id = record.get("id")
        if kind not in ("task", "run") or (record_id is not None and record_id in self._seen):
            return  # marks and worker totals are not tasks; a record sent twice counts once
        if record_id is not None:
            self._seen.add(record_id)
        self.records += 1
        run = self._run(record.get("run_id") or "")
        run.records += 1
        if kind == "run":
            self._note_published(run.run_id, record)
            if record.get("state") == "started" and record.get("total") is not None:
                run.total = int(record["total"])
            elif record.get("state") == "finished":
                run.total = int(record.get("published") or 0)
            run.started = min(run.started, float(record.get("time") or run.started))
            return
        outcome = str(record.get("outcome") or "done")
        self.outcomes[outcome] += 1
        run.outcomes[outcome] += 1
        started = _number(record.get("started"))
        finished = _number(record.get("finished"))
        seconds = _number(record.get("seconds"))
        queued = _number(record.get("queued"))
        if seconds is not None and outcome != "cancelled":
            self.duration.observe(max(0.0, seconds))
        if started is not None and queued is not None:
            self.wait.observe(max(0.0, started - queued))
        if started is not None:
            run.started = min(run.started, started)
        if finished is not None:
            run.finished = max(run.finished, finished)
            self.minutes.finished(finished, outcome)
        if len(run.workers) < MAX_WORKERS_NAMED:
            run.workers.add(str(record.get("worker") or ""))

    def _note_published(self, run_id: str, record: dict) -> None:
        published = record.get("published")
        if not isinstance(published, int) or isinstance(published, bool) or published <= 0:
            return
        record_id = str(record.get("id") or "")
        if not record_id:  # a stranger's note: nothing to tell two of its emitters apart
            self.published += published
            return
        key = (run_id, record_id.rpartition("-")[0] or record_id)
        before = self._published_by.get(key, 0)
        if published > before:
            self._published_by[key] = published
            self.published += published - before

    def _run(self, run_id: str) -> RunLine:
        line = self.runs.get(run_id)
        if line is None:
            line = self.runs[run_id] = RunLine(run_id)
        return line

    def seen(self, run_id: str) -> int:
        line = self.runs.get(run_id)
        return line.records if line is not None else 0

    def run_list(self) -> list[dict]:
        """Every run, newest first."""
        lines = sorted(self.runs.values(), key=lambda line: line.started, reverse=True)
        return [line.as_json() for line in lines if line.outcomes or line.total is not None]


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None
