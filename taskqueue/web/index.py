"""A run's table, indexed for paging: one pass over the run's local copy finds, per task, where
its deciding record is (the first record of its best outcome, as results/table.py decides) and
how many attempts it had. A page then reads only its own 50 records (a seek each), so paging a
100k-task run costs the pass once, not per page. Memory: a few numbers per task.
"""

from __future__ import annotations

import json
from array import array
from pathlib import Path

from taskqueue.results.table import RANK, row_of, task_key

NAMES = {rank: name for name, rank in RANK.items()}


class RunIndex:
    """Tasks of one run in the order their deciding records were written."""

    def __init__(self, path: Path, run_id: str) -> None:
        self.path, self.run_id = path, run_id
        self._best: dict[object, list[int]] = {}  # task -> [rank, offset, attempts]
        self._end = 0  # the copy is read up to here
        self.offsets, self.ranks, self.attempts = array("Q"), b"", array("I")
        self.update()

    def update(self) -> None:
        """Read what the copy gained since the last look (it only grows)."""
        if not self.path.exists():
            return
        decode = json.JSONDecoder().raw_decode  # json.loads without its per-call checks
        with open(self.path, "rb") as copy:
            copy.seek(self._end)
            offset = self._end
            for line in copy:
                if not line.endswith(b"\n"):
                    break  # still being written: next time
                here, offset = offset, offset + len(line)
                if b'"outcome"' in line:  # run notes and worker totals are not tasks
                    self._add(decode, line, here)
            self._end = offset
        ordered = sorted(self._best.values(), key=lambda entry: entry[1])
        self.offsets = array("Q", (entry[1] for entry in ordered))
        self.ranks = bytes(entry[0] for entry in ordered)
        self.attempts = array("I", (min(entry[2], 2**32 - 1) for entry in ordered))

    def _add(self, decode, line: bytes, here: int) -> None:
        try:
            record = decode(line.decode("utf-8"))[0]
        except ValueError:  # a torn line (UnicodeDecodeError is a ValueError too)
            return
        if not isinstance(record, dict) or (record.get("kind") or "task") != "task" \
                or (record.get("run_id") or "") != self.run_id:
            return
        rank = RANK.get(record.get("outcome") or "done", 0)
        attempt = int(record.get("attempt") or 1)
        entry = self._best.get(task_key(record))
        if entry is None:
            self._best[task_key(record)] = [rank, here, attempt]
            return
        if rank > entry[0]:
            entry[0], entry[1] = rank, here
        entry[2] = max(entry[2], attempt)

    @property
    def tasks(self) -> int:
        return len(self.offsets)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(RANK, 0)
        for rank in self.ranks:
            if rank:
                counts[NAMES[rank]] += 1
        return counts

    def positions(self, outcome: str = "") -> list[int]:
        """Which tasks (by position) have *outcome* (all: every task)."""
        if not outcome:
            return list(range(len(self.offsets)))
        wanted = RANK.get(outcome, -1)
        return [n for n, rank in enumerate(self.ranks) if rank == wanted]

    def rows(self, positions: list[int]) -> list[dict]:
        """The CSV rows of the tasks at *positions*: one seek and one line each."""
        found = []
        with open(self.path, "rb") as copy:
            for n in positions:
                copy.seek(self.offsets[n])
                found.append(row_of(json.loads(copy.readline()), self.attempts[n],
                                    self.run_id))
        return found
