"""The history pages' data: one run's tasks (paged, filtered), a task's attempts, the dead tasks
by reason, the timeline picture and the CSV, all from the results record (results/history.py:
the run is read from the stream into a local copy, which the pages then read).

Never from the queues: dead tasks are counted and shown from their records, not by taking
them out of ``<queue>.dead`` to look. A run is read again only when the dashboard's feed has
seen new records of it since (``seen(run)``), and then at most every ``FRESH_SECONDS``. One
thread at a time reads a run (a lock): ten tabs on it read it once.
"""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from taskqueue.results.history import History
from taskqueue.results.record import kind_of
from taskqueue.results.table import task_rows
from taskqueue.views.report import RunReport
from taskqueue.web.index import RunIndex

FRESH_SECONDS = 2.0
PAGE_SIZE = 50
EXAMPLES = 5  # dead tasks shown per reason
OUTCOMES = ("done", "failed", "dead", "cancelled")


@dataclass
class CachedRun:
    records: Callable[[], Iterable[dict]] | None = None
    read_at: float = 0.0
    seen: int = -1  # the feed's count of the run's records when it was read
    index: RunIndex | None = None  # built on the first page asked for, per reading
    lock: threading.Lock = field(default_factory=threading.Lock)


class RunPages:
    """A run's pages for the web view; every method may block (call it from a thread)."""

    def __init__(self, history: History, seen: Callable[[str], int] | None = None) -> None:
        self.history = history
        self.seen = seen or (lambda _run: 0)  # records of a run read so far by the feed
        self._runs: dict[str, CachedRun] = defaultdict(CachedRun)
        self._guard = threading.Lock()

    def latest(self) -> str:
        return self.history.latest_run() or ""

    def records(self, run_id: str) -> Callable[[], Iterable[dict]]:
        with self._guard:
            cached = self._runs[run_id]
        with cached.lock:
            seen = self.seen(run_id)
            grown = seen != cached.seen and time.monotonic() - cached.read_at > FRESH_SECONDS
            if cached.records is None or grown:
                cached.records = self.history.run_records(run_id)
                cached.read_at, cached.seen, cached.index = time.monotonic(), seen, None
            return cached.records

    def index(self, run_id: str) -> RunIndex | None:
        """The run's index, when all of it is in its local copy (not for runs of versions
        before 0.4, whose records are in the old events file)."""
        self.records(run_id)
        path = self.history.copy_path(run_id)
        if self.history.legacy.path.exists() or not path.exists():
            return None
        with self._guard:
            cached = self._runs[run_id]
        with cached.lock:
            if cached.index is None:
                cached.index = RunIndex(path, run_id)
            return cached.index

    def page(self, run_id: str, outcome: str = "", text: str = "", page: int = 1,
             size: int = PAGE_SIZE) -> dict:
        """One page of the run's tasks (one row per task, as the CSV has them)."""
        index = self.index(run_id) if not text.strip() else None
        if index is not None:  # the common case, quick however big the run
            positions = index.positions(outcome)
            skip = (max(1, page) - 1) * size
            return {"run": run_id, "tasks": index.tasks, "counts": index.counts(),
                    "page": page, "size": size, "rows": index.rows(positions[skip:skip + size]),
                    "matching": len(positions), "outcome": outcome, "text": text}
        table, rows = task_rows(run_id, self.records(run_id))
        needle = text.strip().lower()
        matching = (row for row in rows if (not outcome or row["outcome"] == outcome)
                    and (not needle or needle in _searchable(row)))
        skip, shown, more = (max(1, page) - 1) * size, [], 0
        for index, row in enumerate(matching):
            if index < skip:
                continue
            if len(shown) < size:
                shown.append(row)
            else:
                more += 1
        return {"run": run_id, "tasks": table.tasks, "counts": table.counts(), "page": page,
                "size": size, "rows": shown, "matching": skip + len(shown) + more,
                "outcome": outcome, "text": text}

    def attempts(self, run_id: str, row: int | None, message_id: str = "") -> list[dict]:
        """Every attempt of one task, oldest first: who, when, how long, outcome, reason."""
        found = []
        for record in self.records(run_id)():
            if kind_of(record) != "task" or (record.get("run_id") or "") != run_id:
                continue
            if (row is not None and record.get("row") == row) or (
                    message_id and record.get("message_id") == message_id):
                found.append({key: record.get(key) for key in (
                    "attempt", "worker", "slot", "host", "started", "seconds", "outcome",
                    "result", "reason", "message_id", "row", "task")})
        return sorted(found, key=lambda r: (r.get("started") or 0, r.get("attempt") or 0))

    def dead(self, run_id: str) -> dict:
        """The run's dead tasks (their last outcome), grouped by reason, with a few of each.
        A group's ``filter`` is a piece of text every reason in it contains: what *Requeue
        these* gives requeue-dead's --reason."""
        _table, rows = task_rows(run_id, self.records(run_id))
        groups: dict[str, dict] = {}
        for row in rows:
            if row["outcome"] != "dead":
                continue
            reason = row["result_or_error"] or ""
            shape = reason_shape(reason)
            group = groups.setdefault(shape, {"reason": shape, "filter": reason_filter(reason),
                                              "count": 0, "examples": []})
            group["count"] += 1
            if len(group["examples"]) < EXAMPLES:
                group["examples"].append({"row": row["row"], "task": row["task"],
                                          "worker": row["worker"], "reason": reason,
                                          "attempts": row["attempts"]})
        ordered = sorted(groups.values(), key=lambda g: -g["count"])
        return {"run": run_id, "total": sum(g["count"] for g in ordered), "reasons": ordered}

    def dead_matching(self, run_id: str, text: str) -> int:
        """How many of the run's dead tasks requeue-dead --reason TEXT would take."""
        _table, rows = task_rows(run_id, self.records(run_id))
        needle = text.lower()
        return sum(1 for row in rows if row["outcome"] == "dead"
                   and needle in (row["result_or_error"] or "").lower())

    def svg(self, run_id: str) -> str:
        return RunReport(self.records(run_id)(), run_id, self.history.spec.name).svg()

    def csv_lines(self, run_id: str) -> Iterator[str]:
        import csv
        import io

        from taskqueue.results.table import COLUMNS

        _table, rows = task_rows(run_id, self.records(run_id))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, COLUMNS)
        writer.writeheader()
        for count, row in enumerate(rows, 1):
            writer.writerow(row)
            if count % 1000 == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()


_VARYING = re.compile(r"'[^']*'|\"[^\"]*\"|\d+(?:\.\d+)?")


def reason_shape(reason: str) -> str:
    """A reason as the dead page groups it: its last line (a traceback's is the error), with
    what differs from task to task (quoted text, numbers) shown as '…' and N."""
    last = ((reason or "").strip().splitlines() or ["(no reason)"])[-1]
    return _VARYING.sub(lambda m: "N" if m[0][0].isdigit() else "'…'", last)[:160]


def reason_filter(reason: str) -> str:
    """The longest piece of the reason's last line that holds no quoted text or number."""
    last = ((reason or "").strip().splitlines() or [""])[-1]
    pieces = [piece.strip(" ;:,") for piece in _VARYING.split(last) if piece]
    return max(pieces, key=len, default="")[:160]


def _searchable(row: dict) -> str:
    return " ".join(str(row[key]) for key in ("row", "task", "worker", "host",
                                               "result_or_error", "message_id")).lower()

