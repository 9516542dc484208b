"""The history pages' data: one run's tasks (paged, filtered), a task's attempts, the dead tasks
by reason, the timeline picture and the CSV, all from the results record as the feed copied
it (copies.py): a page reads a file, never the broker.

Never from the queues: dead tasks are counted and shown from their records, not by taking
them out of ``<queue>.dead`` to look. A run's index (index.py) is read on when the feed has
seen new records of the run since (``seen(run)``), at most every ``FRESH_SECONDS``; one
thread at a time per run (a lock), so ten tabs on one run read it once.
"""

from __future__ import annotations

import io
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from taskqueue.results.table import task_rows, write_tasks_csv
from taskqueue.views.report import RunReport
from taskqueue.web.copies import RunCopies, read_copy
from taskqueue.web.index import RunIndex
from taskqueue.wire.record import kind_of
from taskqueue.worker.policy import MAX_REASON  # what a dead copy's x-death-reason keeps

FRESH_SECONDS = 1.0
PAGE_SIZE = 50
EXAMPLES = 5  # dead tasks shown per reason


@dataclass
class CachedIndex:
    index: RunIndex | None = None
    read_at: float = 0.0
    seen: int = -1  # the feed's count of the run's records when the index was read on
    lock: threading.Lock = field(default_factory=threading.Lock)


class RunPages:
    """A run's pages for the web view; every method may block (call it from a thread)."""

    def __init__(self, copies: RunCopies, queue: str, seen: Callable[[str], int] | None = None,
                 latest: Callable[[], str] | None = None) -> None:
        self.copies, self.queue = copies, queue
        self.seen = seen or (lambda _run: 0)  # records of a run read so far by the feed
        self.latest = latest or (lambda: "")
        self._runs: dict[str, CachedIndex] = defaultdict(CachedIndex)
        self._guard = threading.Lock()

    def records(self, run_id: str) -> Callable[[], Iterable[dict]]:
        path = self.copies.path(run_id)
        return lambda: read_copy(path)

    def index(self, run_id: str) -> RunIndex:
        with self._guard:
            cached = self._runs[run_id]
        with cached.lock:
            seen = self.seen(run_id)
            if cached.index is None:
                cached.index = RunIndex(self.copies.path(run_id), run_id)
                cached.read_at, cached.seen = time.monotonic(), seen
            elif seen != cached.seen and time.monotonic() - cached.read_at > FRESH_SECONDS:
                cached.index.update()
                cached.read_at, cached.seen = time.monotonic(), seen
            return cached.index

    def page(self, run_id: str, outcome: str = "", text: str = "", page: int = 1,
             size: int = PAGE_SIZE) -> dict:
        """One page of the run's tasks (one row per task, as the CSV has them)."""
        if not text.strip():  # the common case, quick however big the run
            index = self.index(run_id)
            positions = index.positions(outcome)
            skip = (max(1, page) - 1) * size
            return {"run": run_id, "tasks": index.tasks, "counts": index.counts(),
                    "page": page, "size": size, "rows": index.rows(positions[skip:skip + size]),
                    "matching": len(positions), "outcome": outcome, "text": text}
        table, rows = task_rows(run_id, self.records(run_id))
        needle = text.strip().lower()
        matching = (row for row in rows if (not outcome or row["outcome"] == outcome)
                    and (not needle or needle in _searchable(row)))
        skip, more = (max(1, page) - 1) * size, 0
        shown: list[dict] = []
        for position, row in enumerate(matching):
            if position < skip:
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
            reason = (row["result_or_error"] or "")[:MAX_REASON]  # what the dead copy holds
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
                   and needle in (row["result_or_error"] or "")[:MAX_REASON].lower())

    def svg(self, run_id: str) -> str:
        return RunReport(self.records(run_id)(), run_id, self.queue).svg()

    def csv_text(self, run_id: str) -> str:
        """The run's CSV, as ``task_report.py --csv`` writes it (results/table.py), for a
        spreadsheet: a value that would be a formula there is written as text."""
        buffer = io.StringIO()
        write_tasks_csv(buffer, run_id, self.records(run_id), for_spreadsheets=True)
        return buffer.getvalue()


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

