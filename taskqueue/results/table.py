"""One row per task: a run's records (every attempt, some more than once) -> the CSV.

Two passes over the run's records, memory flat: the first keeps, per task, the best outcome
seen (done > dead > cancelled > failed) and its attempts counted (a byte and two bytes per
row); the second writes each task once, at its deciding record. A task done twice (it ran
twice: at-least-once) is one row; a task that failed and is still retrying is a row with
outcome ``failed``. Whichever host reads, whenever, however often: the same rows.
"""

from __future__ import annotations

import csv
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TextIO

from taskqueue.wire.record import kind_of

RANK = {"failed": 1, "cancelled": 2, "dead": 3, "done": 4}
COLUMNS = ["row", "task", "worker", "host", "started", "seconds", "attempts", "outcome",
           "result_or_error", "message_id", "run_id"]


class TaskTable:
    """Per task: its best outcome and its number of attempts (first pass), then which record
    stands for it (second pass, ``deciding``)."""

    def __init__(self) -> None:
        self._rank = bytearray()  # per row: RANK of the best outcome (0: none yet)
        self._attempts = array("H")  # per row: highest attempt number seen
        self._written = bytearray()  # per row: 1 once its line is out
        self._rowless: dict[str, list[int]] = {}  # rank, attempts, written
        self.tasks = 0

    def add(self, record: dict) -> None:
        outcome = RANK.get(record.get("outcome") or "done", 0)
        attempt = min(int(record.get("attempt") or 1), 65535)
        row = _row(record)
        if row is None:
            entry = self._rowless.setdefault(_rowless_key(record), [0, 0, 0])
            self.tasks += entry[0] == 0
            entry[0], entry[1] = max(entry[0], outcome), max(entry[1], attempt)
            return
        if row >= len(self._rank):
            grow = row + 1 - len(self._rank)
            self._rank.extend(bytes(grow))
            self._attempts.extend([0] * grow)
            self._written.extend(bytes(grow))
        self.tasks += self._rank[row] == 0
        self._rank[row] = max(self._rank[row], outcome)
        self._attempts[row] = max(self._attempts[row], attempt)

    def deciding(self, record: dict) -> int | None:
        """The task's attempt count when *record* is the one that stands for it (the first
        record of its best outcome); None for every other record."""
        outcome = RANK.get(record.get("outcome") or "done", 0)
        row = _row(record)
        if row is None:
            entry = self._rowless.get(_rowless_key(record))
            if entry is None or entry[2] or entry[0] != outcome:
                return None
            entry[2] = 1
            return entry[1]
        if row >= len(self._rank) or self._written[row] or self._rank[row] != outcome:
            return None
        self._written[row] = 1
        return self._attempts[row]

    def counts(self) -> dict[str, int]:
        """Tasks by their best outcome."""
        names = {rank: name for name, rank in RANK.items()}
        counts = dict.fromkeys(RANK, 0)
        for rank in self._rank:
            if rank:
                counts[names[rank]] += 1
        for entry in self._rowless.values():
            counts[names[entry[0]]] += 1
        return counts


def task_key(record: dict) -> object:
    """What one task is in the table: its row, else its message id (or row and text)."""
    row = _row(record)
    return row if row is not None else _rowless_key(record)


def _row(record: dict) -> int | None:
    row = record.get("row")
    return row if isinstance(row, int) and 0 <= row < 1 << 27 else None


def _rowless_key(record: dict) -> str:
    return record.get("message_id") or f"{record.get('row')}:{record.get('task')}"


def task_records(records: Iterable[dict], run_id: str) -> Iterable[dict]:
    return (r for r in records if kind_of(r) == "task" and (r.get("run_id") or "") == run_id)


def task_rows(run_id: str, records: Callable[[], Iterable[dict]]
              ) -> tuple[TaskTable, Iterator[dict]]:
    """The table (first pass, done here) and the rows, one per task (second pass, as the
    caller iterates): dicts with the ``COLUMNS`` as keys."""
    table = TaskTable()
    for record in task_records(records(), run_id):
        table.add(record)

    def rows() -> Iterator[dict]:
        for record in task_records(records(), run_id):
            attempts = table.deciding(record)
            if attempts is not None:
                yield row_of(record, attempts, run_id)

    return table, rows()


def row_of(record: dict, attempts: int, run_id: str) -> dict:
    """The CSV's row (``COLUMNS``) for a task whose deciding record is *record*."""
    outcome = record.get("outcome") or "done"
    text = record.get("result") if outcome == "done" else record.get("reason")
    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(float(record.get("started") or 0)))
    return {"row": record.get("row") if record.get("row") is not None else "-",
            "task": record.get("task") or "", "worker": record.get("worker") or "",
            "host": record.get("host") or "", "started": started,
            "seconds": f"{float(record.get('seconds') or 0):.3f}", "attempts": attempts,
            "outcome": outcome, "result_or_error": text or "",
            "message_id": record.get("message_id") or "", "run_id": run_id}


# A cell starting so is a formula to a spreadsheet ("CSV injection"): a task's text or result
# could run one, or a command through DDE, in whoever opens the download.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def as_text_cell(value: object) -> object:
    """*value* as a spreadsheet shows it as text: a leading ``'`` before a formula's start.
    A number (``-5``, ``+1.5e3``) and the ``-`` of a task without a row stay as they are."""
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS) or value == "-":
        return value
    try:
        float(value)
        return value
    except ValueError:
        return "'" + value


def write_tasks_csv(handle: TextIO, run_id: str, records: Callable[[], Iterable[dict]],
                    for_spreadsheets: bool = False) -> TaskTable:
    """Write one row per task of *run_id* to *handle*; *records()* gives the run's records,
    once per pass. Returns the table (its counts say how many of each). *for_spreadsheets*
    (the web view's download, opened by a person): a text that a spreadsheet would read as a
    formula is written as text (``as_text_cell``); otherwise (``--csv``, read by programs)
    every value is as recorded."""
    table, rows = task_rows(run_id, records)
    writer = csv.DictWriter(handle, COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: as_text_cell(v) for k, v in row.items()} if for_spreadsheets
                        else row)
    return table


def write_tasks_file(path: Path, run_id: str, records: Callable[[], Iterable[dict]]
                     ) -> TaskTable:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        return write_tasks_csv(handle, run_id, records)
