"""What the dashboard adds up from the results record as it reads it: attempts by outcome,
task durations and waits (histograms), tasks published, and a line per run. Pure: fed
records, no broker.

Tasks published: the emitter writes no record per task, only its run's notes (wire/events.py
``run_event``): "started" (published 0) and "finished" with how many it had confirmed. Each
emitter that worked on a run (``--resume`` goes on with the same run id) writes its own, so
the count is the sum, per emitter, of the largest ``published`` it said (an event id starts
with its process: wire/events.py ``event_id``). It steps up when an emitter finishes; an
emitter that also said how far it had got on the way would move it sooner, unchanged here.
A run's total is summed the same way, per emitter: what it published once finished, what it
said it would before (``EmitterNote``): a resumed run's total is its emitters' together.

The live page's run cards (snapshot.py) are the lines of the runs going on (``live_runs``):
the same figures as the runs page, each card following its own run.

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
RECENT_SECONDS = 600.0  # a run whose tasks are all final stays live this long after its last
STALLED_SECONDS = 3600.0  # a run with tasks not final, heard from within this, is live


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
class EmitterNote:
    """What one emitter of a run said: the rows it would publish, the most it confirmed."""

    announced: int | None = None
    published: int = 0
    finished: bool = False

    def counted(self) -> int | None:
        """Its share of the run's total: what it published once finished, else what it said
        it would (or, saying nothing, what it has so far)."""
        if self.finished or self.announced is None:
            return self.published if self.finished or self.published else None
        return max(self.announced, self.published)


@dataclass
class RunLine:
    """One run as the runs page lists it (attempt counts; its page counts tasks exactly)."""

    run_id: str
    started: float = float("inf")
    finished: float = 0.0
    heard: float = 0.0  # the newest time of its records: a run heard from lately is live
    records: int = 0  # of this run, read so far
    outcomes: Counter = field(default_factory=Counter)
    workers: set = field(default_factory=set)
    emitters: dict[str, EmitterNote] = field(default_factory=dict)  # by emitter (its id prefix)

    @property
    def total(self) -> int | None:
        """Rows its emitters published or said they would, summed over them (a ``--resume``
        goes on with the same run id: each emitter publishes its part)."""
        shares = [note.counted() for note in self.emitters.values()]
        known = [share for share in shares if share is not None]
        return sum(known) if known else None

    def settled(self) -> int:
        """Its tasks that reached a final outcome (a failed attempt is retried)."""
        return self.outcomes["done"] + self.outcomes["dead"] + self.outcomes["cancelled"]

    def live(self, now: float) -> bool:
        """Heard from in the last RECENT_SECONDS, or tasks not yet final and heard from in the
        last STALLED_SECONDS (an abandoned run leaves the live page after that)."""
        total = self.total
        unfinished = total is None or self.settled() < total
        return self.heard >= now - (STALLED_SECONDS if unfinished else RECENT_SECONDS)

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
            self._note_emitter(run, record)
            when = _number(record.get("time"))
            if when is not None:
                run.started = min(run.started, when)
                run.heard = max(run.heard, when)
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
            run.heard = max(run.heard, finished)
            self.minutes.finished(finished, outcome)
        if len(run.workers) < MAX_WORKERS_NAMED:
            run.workers.add(str(record.get("worker") or ""))

    def _note_emitter(self, run: RunLine, record: dict) -> None:
        """A run note: its emitter's total and published count, on the run's line and in the
        tasks published (the largest each emitter said: module docstring)."""
        record_id = str(record.get("id") or "")
        note = run.emitters.setdefault(record_id.rpartition("-")[0] or record_id, EmitterNote())
        announced = _count(record.get("total"))
        if record.get("state") == "started" and announced is not None:
            note.announced = announced
        published = _count(record.get("published")) or 0
        if record.get("state") == "finished":
            note.finished = True
        if not record_id:  # a stranger's note: nothing to tell two of its emitters apart
            self.published += published
            note.published = max(note.published, published)
        elif published > note.published:
            self.published += published - note.published
            note.published = published

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
        return [line.as_json() for line in self._listed()]

    def live_runs(self, now: float) -> list[dict]:
        """The runs going on (``RunLine.live``), newest first; none: the newest recorded. The
        same figures as ``run_list``: the live page and the runs page agree."""
        lines = self._listed()
        live = [line for line in lines if line.live(now)]
        return [line.as_json() for line in live or lines[:1]]

    def _listed(self) -> list[RunLine]:
        lines = sorted(self.runs.values(), key=lambda line: line.started, reverse=True)
        return [line for line in lines if line.outcomes or line.total is not None]


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else None


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None
