"""The dashboard's copies of the runs: as the feed reads the results stream (feed.py), each
record is appended to its run's file, ``<dir>/<run>.jsonl``, so the run pages read a file and
never the broker again (one reader per server, whatever the pages ask).

The directory is the server's own (``reports/<queue>.web-XXXX/``, made at start, removed at the
end: a second dashboard on the same queue has its own); the feed reads the stream from its
first record, and the copies are made anew. A line is written whole
(and flushed after each stream message); a reader that meets a line still being written leaves
it for its next look.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from taskqueue.results.history import safe_name
from taskqueue.wire.record import kind_of

OPEN_FILES = 16  # the runs being written at once (older handles are closed, reopened if needed)


class RunCopies:
    """One JSON-lines file per run (see the module docstring)."""

    def __init__(self, parent: Path, queue: str) -> None:
        self.parent, self.queue = parent, queue
        self.stem = f"{safe_name(queue)}.web"  # a queue's name is data: no / or .. in a path
        self.directory = parent / self.stem  # until start() makes the real one
        self._files: OrderedDict[str, IO[str]] = OrderedDict()
        self._lock = threading.Lock()

    def start(self) -> None:
        self.parent.mkdir(parents=True, exist_ok=True)
        self.directory = Path(tempfile.mkdtemp(prefix=f"{self.stem}-", dir=self.parent))

    def path(self, run_id: str) -> Path:
        """One file per run id (two ids never share one: a digest of the id is in its name)."""
        safe = safe_name(run_id)
        digest = hashlib.sha1(run_id.encode()).hexdigest()[:8]
        return self.directory / f"{safe}-{digest}.jsonl"

    def add(self, records: list[dict]) -> None:
        """Append each task or run record to its run's file; a worker's totals to each run
        it names."""
        with self._lock:
            for record in records:
                kind = kind_of(record)
                if kind in ("task", "run", "discard"):  # a deletion is its run's too
                    runs = [record.get("run_id") or ""]
                elif kind == "worker":
                    runs = list(record.get("runs") or {})
                else:
                    continue
                line = json.dumps(record, ensure_ascii=False) + "\n"
                for run_id in runs:
                    self._file(run_id).write(line)
            for handle in self._files.values():
                handle.flush()

    def _file(self, run_id: str) -> IO[str]:
        handle = self._files.get(run_id)
        if handle is not None:
            self._files.move_to_end(run_id)
            return handle
        if len(self._files) >= OPEN_FILES:
            _old, oldest = self._files.popitem(last=False)
            oldest.close()
        handle = self._files[run_id] = open(self.path(run_id), "a", encoding="utf-8")  # noqa: SIM115
        return handle

    def close(self, remove: bool = True) -> None:
        with self._lock:
            for handle in self._files.values():
                handle.close()
            self._files.clear()
            if remove and self.directory.name != self.stem:
                shutil.rmtree(self.directory, ignore_errors=True)


def read_copy(path: Path) -> Iterator[dict]:
    """The records of a copy, oldest first; a torn or unfinished last line is left out."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                return  # still being written
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record
