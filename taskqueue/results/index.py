"""Which tasks have a done record: the worker's answer to "was this task already done?".

Memory stays bounded however long the record: the runs a worker is handed are indexed
(``MAX_RUNS``, least recently used first out), and as many others read meanwhile, and a run
costs one 32-bit fingerprint of its message_id per row read (a million rows: 4 MB). Ids
without a row (other producers'), or with a row far from the others, go in a bounded map;
past its size they are forgotten, which can only mean a task runs again (at-least-once),
never that one is skipped wrongly. Pure logic: the stream reading is tail.py's.
"""

from __future__ import annotations

import zlib
from array import array
from collections import OrderedDict

from taskqueue.wire.messages import row_of

# Runs kept (handed, and as many read meanwhile). A run costs 4 bytes a row, so many fit; too
# few, and a worker handed tasks of more runs than that in turn (retries of many runs, many
# emitters) forgets one each time and reads the stream again from its start, again and again
# (make chaos, seed 148826: 40 runs, 8 kept, workers re-reading for minutes at the end).
MAX_RUNS = 64
MAX_ROWLESS = 100_000  # done ids without a row kept per run
MAX_FORGOTTEN = 10_000  # runs remembered as dropped from the index (to read them again)
MAX_DETAILS = 50_000  # (worker, finished) of recent done records, for the log line
MAX_GAP = 1 << 18  # rows (1 MB of fingerprints) a new row may lie beyond those indexed


def fingerprint(message_id: str) -> int:
    return zlib.crc32(message_id.encode("utf-8")) | 1  # never 0, which means "not done"


class RunIndex:
    """The done tasks of one run: a fingerprint per row over the span of rows read (which
    need not start at row 1: a check reads from its own moment), ids without a row aside. A
    row far outside that span (``MAX_GAP``: another producer's odd id, "row 10,000,020") is
    kept aside too, so that one odd id never costs megabytes."""

    def __init__(self) -> None:
        self.rows = array("I")
        self.base = 0  # the row of rows[0]
        self.rowless: OrderedDict[str, None] = OrderedDict()

    def add(self, message_id: str) -> None:
        row = row_of(message_id)
        if row is not None and self._make_room(row):
            self.rows[row - self.base] = fingerprint(message_id)
            return
        self.rowless[message_id] = None
        if len(self.rowless) > MAX_ROWLESS:
            self.rowless.popitem(last=False)

    def _make_room(self, row: int) -> bool:
        """Whether *row* has a place in ``rows`` (made now, if it is near enough)."""
        if not self.rows:
            self.base = row
            self.rows.append(0)
            return True
        end = self.base + len(self.rows)
        if self.base <= row < end:
            return True
        if end <= row < end + MAX_GAP:
            self.rows.extend(array("I", [0]) * (row + 1 - end))
            return True
        if self.base - MAX_GAP < row < self.base:
            self.rows[0:0] = array("I", [0]) * (self.base - row)
            self.base = row
            return True
        return False

    def __contains__(self, message_id: str) -> bool:
        row = row_of(message_id)
        if row is not None and self.base <= row < self.base + len(self.rows) \
                and self.rows[row - self.base] == fingerprint(message_id):
            return True
        return message_id in self.rowless  # (kept aside before the span reached its row)


class DoneIndex:
    """Done records of the runs a worker was handed (``runs``, the ``MAX_RUNS`` most recently
    handed), and of the other runs read meanwhile (``recent``, as many): a run first handed
    after its records were read is then known at once. ``watch(run)``: the run is of
    interest; True when its records are all in the index (as far as they were read)."""

    def __init__(self, max_runs: int = MAX_RUNS) -> None:
        self.runs: OrderedDict[str, RunIndex] = OrderedDict()
        self.recent: OrderedDict[str, RunIndex] = OrderedDict()
        self.max_runs = max_runs
        self.details: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        self.forgotten: OrderedDict[str, None] = OrderedDict()  # runs whose records went

    def _forget(self, tier: OrderedDict) -> None:
        run, _index = tier.popitem(last=False)
        self.forgotten[run] = None
        if len(self.forgotten) > MAX_FORGOTTEN:
            self.forgotten.popitem(last=False)

    def watch(self, run: str) -> bool:
        """Keep *run*'s records; True unless some were dropped from the index (the caller
        still checks that reading began before the run did, or reads it again)."""
        if run in self.runs:
            self.runs.move_to_end(run)
            return True
        known = run not in self.forgotten  # kept, or none of its done records read yet
        self.runs[run] = self.recent.pop(run) if run in self.recent else RunIndex()
        if len(self.runs) > self.max_runs:
            self._forget(self.runs)
        return known

    def add(self, record: dict) -> None:
        """A task record read from the stream (or confirmed by this worker)."""
        if record.get("outcome") != "done":
            return
        message_id, run = record.get("message_id"), record.get("run_id") or ""
        if not isinstance(message_id, str) or not message_id:
            return
        index = self.runs.get(run)
        if index is None:
            index = self.recent.get(run)
            if index is None:
                index = self.recent[run] = RunIndex()
                if len(self.recent) > self.max_runs:
                    self._forget(self.recent)
            else:
                self.recent.move_to_end(run)
        index.add(message_id)
        self.details[(run, message_id)] = (str(record.get("worker") or "?"),
                                           float(record.get("finished") or 0))
        if len(self.details) > MAX_DETAILS:
            self.details.popitem(last=False)

    def lookup(self, run: str, message_id: str) -> tuple[str, float] | None:
        """(worker, finished) of its done record, ("?", 0.0) when done but the detail is
        forgotten, None when not done (as far as the records read say)."""
        index = self.runs.get(run) or self.recent.get(run)
        if index is None or message_id not in index:
            return None
        return self.details.get((run, message_id), ("?", 0.0))
