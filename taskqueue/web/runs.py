"""The history pages' data: one run's tasks (paged, filtered), a task's attempts, the dead tasks
by reason, the timeline picture and the CSV, all from the results record as the feed copied
it (copies.py): a page reads a file, never the broker.

Never from the queues: dead tasks are counted and shown from their records, not by taking
them out of ``<queue>.dead`` to look. A run's index (index.py) is read on when the feed has
seen new records of the run since (``seen(run)``), at most every ``FRESH_SECONDS``; one
thread at a time per run (a lock), so ten tabs on one run read it once. Only the indexes of the
``KEPT_INDEXES`` runs last viewed are kept (some 21-27 MB each for a run of 100,000 tasks): a
run viewed before those is indexed again from its copy, in one pass.
"""

from __future__ import annotations

import io
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from urllib.parse import quote

from taskqueue.results.table import RANK, task_rows, write_tasks_csv
from taskqueue.views.report import RunReport
from taskqueue.web.copies import RunCopies, read_copy
from taskqueue.web.index import RunIndex
from taskqueue.wire.record import kind_of
from taskqueue.worker.policy import MAX_REASON  # what a dead copy's x-death-reason keeps

FRESH_SECONDS = 1.0
PAGE_SIZE = 50
EXAMPLES = 5  # dead tasks shown per reason
KEY_CHUNK = 5000  # rows read at once for their sort keys (only the keys are kept)
KEPT_INDEXES = 4  # runs whose index stays in memory, the most recently viewed


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
        self._runs: OrderedDict[str, CachedIndex] = OrderedDict()  # least recently used first
        self._guard = threading.Lock()

    def records(self, run_id: str) -> Callable[[], Iterable[dict]]:
        path = self.copies.path(run_id)
        return lambda: read_copy(path)

    def index(self, run_id: str) -> RunIndex:
        with self._guard:
            cached = self._runs.setdefault(run_id, CachedIndex())
            self._runs.move_to_end(run_id)
            while len(self._runs) > KEPT_INDEXES:
                # A page still being made from a dropped index finishes with it; only the
                # next page of that run indexes it again.
                self._runs.popitem(last=False)
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
             size: int = PAGE_SIZE, sort: str = "", descending: bool = False) -> dict:
        """One page of the run's tasks (one row per task, as the CSV has them), in the order
        written or sorted by one of ``SORTS`` (the whole run is sorted, then paged)."""
        sort = sort if sort in SORTS else ""
        skip = (max(1, page) - 1) * size
        answer = {"run": run_id, "page": page, "size": size, "outcome": outcome, "text": text,
                  "sort": sort, "descending": descending}
        if not text.strip():  # the common case, quick however big the run
            index = self.index(run_id)
            positions = index.positions(outcome)
            if sort in ("attempts", "outcome"):  # the index holds these: no row read
                attempts, ranks = index.attempts, index.ranks
                positions.sort(key=(lambda n: attempts[n]) if sort == "attempts"
                               else (lambda n: -ranks[n]), reverse=descending)
                shown = index.rows(positions[skip:skip + size])
            elif sort:  # every row of the selection read once for its key alone, then a page
                keys: list[tuple] = []
                for start in range(0, len(positions), KEY_CHUNK):
                    keys += map(sort_key(sort), index.rows(positions[start:start + KEY_CHUNK]))
                order = sorted(range(len(positions)), key=keys.__getitem__, reverse=descending)
                shown = index.rows([positions[n] for n in order[skip:skip + size]])
            else:
                shown = index.rows(positions[skip:skip + size])
            return {**answer, "tasks": index.tasks, "counts": index.counts(), "rows": shown,
                    "matching": len(positions)}
        table, rows = task_rows(run_id, self.records(run_id))
        needle = text.strip().lower()
        matching = [row for row in rows if (not outcome or row["outcome"] == outcome)
                    and (not needle or needle in _searchable(row))]
        if sort:
            matching = sorted_rows(matching, sort, descending)
        return {**answer, "tasks": table.tasks, "counts": table.counts(),
                "rows": matching[skip:skip + size], "matching": len(matching)}

    def attempts(self, run_id: str, row: int | None, message_id: str = "") -> list[dict]:
        """Every attempt of one task, oldest first: who, when, how long, outcome, reason;
        and, once it was deleted from .dead (discard-dead), a last line saying who did."""
        found = []
        for record in self.records(run_id)():
            kind = kind_of(record)
            if kind not in ("task", "discard") or (record.get("run_id") or "") != run_id:
                continue
            if (row is not None and record.get("row") == row) or (
                    message_id and record.get("message_id") == message_id):
                found.append(_deletion(record) if kind == "discard" else {
                    key: record.get(key) for key in (
                        "attempt", "worker", "slot", "host", "started", "seconds", "outcome",
                        "result", "reason", "message_id", "row", "task")})
        return sorted(found, key=lambda r: (r.get("started") or 0, r.get("attempt") or 0))

    def discarded(self, run_id: str) -> set[str]:
        """Message ids of the run's tasks deleted from .dead (discard records), as read."""
        return {str(record.get("message_id")) for record in self.records(run_id)()
                if kind_of(record) == "discard" and (record.get("run_id") or "") == run_id}

    def _dead_rows(self, run_id: str) -> Iterator[dict]:
        """The run's dead tasks still dead: not deleted since (discard-dead)."""
        gone = self.discarded(run_id)
        _table, rows = task_rows(run_id, self.records(run_id))
        return (row for row in rows if row["outcome"] == "dead"
                and row["message_id"] not in gone)

    def dead(self, run_id: str) -> dict:
        """The run's dead tasks (their last outcome), grouped by reason, with a few of each.
        A group's ``filter`` is a piece of text every reason in it contains: what *Requeue
        these* gives requeue-dead's --reason."""
        groups: dict[str, dict] = {}
        for row in self._dead_rows(run_id):
            reason = (row["result_or_error"] or "")[:MAX_REASON]  # what the dead copy holds
            shape = reason_shape(reason)
            group = groups.setdefault(shape, {"reason": shape, "filter": reason_filter(reason),
                                              "count": 0, "examples": []})
            group["count"] += 1
            if len(group["examples"]) < EXAMPLES:
                group["examples"].append({"row": row["row"], "task": row["task"],
                                          "worker": row["worker"], "reason": reason,
                                          "attempts": row["attempts"],
                                          "message_id": row["message_id"]})
        ordered = sorted(groups.values(), key=lambda g: -g["count"])
        return {"run": run_id, "total": sum(g["count"] for g in ordered), "reasons": ordered}

    def dead_of_reason(self, run_id: str, shape: str, page: int = 1,
                       size: int = PAGE_SIZE) -> dict:
        """Every dead task of the run whose reason has *shape* (as ``dead`` groups them), a
        page at a time."""
        skip, count, shown, example = (max(1, page) - 1) * size, 0, [], ""
        for row in self._dead_rows(run_id):
            reason = (row["result_or_error"] or "")[:MAX_REASON]
            if reason_shape(reason) != shape:
                continue
            example = example or reason
            if skip <= count < skip + size:
                shown.append({"row": row["row"], "task": row["task"], "worker": row["worker"],
                              "reason": reason, "attempts": row["attempts"],
                              "message_id": row["message_id"]})
            count += 1
        return {"run": run_id, "reason": shape, "filter": reason_filter(example),
                "count": count, "page": page, "pages": max(1, -(-count // size)),
                "tasks": shown}

    def dead_matching(self, run_id: str, text: str) -> int:
        """How many of the run's dead tasks requeue-dead --reason TEXT would take."""
        needle = text.lower()
        return sum(1 for row in self._dead_rows(run_id)
                   if needle in (row["result_or_error"] or "")[:MAX_REASON].lower())

    def svg(self, run_id: str) -> str:
        return RunReport(self.records(run_id)(), run_id, self.queue).svg()

    def csv_text(self, run_id: str) -> str:
        """The run's CSV, as ``task_report.py --csv`` writes it (results/table.py), for a
        spreadsheet: a value that would be a formula there is written as text."""
        buffer = io.StringIO()
        write_tasks_csv(buffer, run_id, self.records(run_id), for_spreadsheets=True)
        return buffer.getvalue()


SORTS = ("row", "worker", "started", "seconds", "attempts", "outcome")


def sorted_rows(rows: Iterable[dict], column: str, descending: bool = False) -> list[dict]:
    """*rows* sorted by one of ``SORTS``: rows by number (those without one after), seconds
    as numbers, outcomes best first (done, dead, cancelled, failed), the rest as text; ties
    keep the order written."""
    return sorted(rows, key=sort_key(column), reverse=descending)


def sort_key(column: str) -> Callable[[dict], tuple]:
    """What ``sorted_rows`` compares: a small tuple per row (kept for a whole run)."""
    def key(row: dict) -> tuple:
        value = row[column]
        if column == "row":
            return (0, value, "") if isinstance(value, int) else (1, 0, row["message_id"])
        if column == "seconds":
            return (float(value),)
        if column == "outcome":
            return (-RANK.get(value, 0),)
        return (value,)

    return key


def _deletion(record: dict) -> dict:
    """A discard record as the task's last line: deleted, when, by whom."""
    return {"attempt": None, "worker": record.get("by"), "slot": None, "host": None,
            "started": record.get("time"), "seconds": None, "outcome": "deleted",
            "result": None, "reason": f"deleted from {record.get('queue') or '?'}.dead by "
                                      f"{record.get('by') or '?'}",
            "message_id": record.get("message_id"), "row": record.get("row"),
            "task": record.get("task")}


def task_path(run_id: str, row: object, message_id: str) -> str:
    """A task page's address under the root: ``runs/RUN/tasks/ROW``, or by its message id for
    a task without a row (another producer's)."""
    run = quote(run_id or "_", safe="")
    if isinstance(row, int) and not isinstance(row, bool):
        return f"runs/{run}/tasks/{row}"
    return f"runs/{run}/tasks/id/{quote(message_id or '', safe='')}"


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

