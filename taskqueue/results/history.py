"""A queue's history for the report: the results stream, and what older versions kept.

``History`` finds runs and gives one run's records, from every source, as a stream read as
often as the caller likes: the run is read from the broker once (from where it began, not from
the stream's start) into a local copy, ``reports/<queue>.runs/<run>.jsonl``, which later passes
read. That copy is a cache, never the only one: every report reads the stream again, and
``--offline`` reads only the copies. Runs of versions before 0.4 (``reports/*.events.jsonl``,
filled from the ``<queue>.events`` queue) are read too.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.results.events_file import EventStore
from taskqueue.results.reader import RecordReader
from taskqueue.wire.record import kind_of, run_began

LATEST_WINDOWS = (900.0, 6 * 3600.0, 3 * 86400.0, None)  # look back this far for the latest run


class History:
    """Runs and their records for one queue (see the module docstring)."""

    def __init__(self, settings: BrokerSettings | None, spec: QueueSpec, directory: Path) -> None:
        self.settings, self.spec = settings, spec  # settings None: offline
        self.legacy = EventStore(directory, spec.name)
        self.cache = directory / f"{spec.name}.runs"
        self.retention_note: str | None = None

    def reader(self, idle: float = 1.0) -> RecordReader | None:
        return None if self.settings is None else RecordReader(self.settings, self.spec, idle)

    # --- which runs ------------------------------------------------------------------------
    def latest_run(self) -> str | None:
        """The run whose last task record is the newest, on the stream or in older files."""
        newest: dict[str, float] = {}
        _newest_of(self.legacy.events(), newest)
        reader = self.reader(idle=0.5)
        head = reader.head() if reader is not None else None
        if reader is not None and head is not None:
            for window in LATEST_WINDOWS:
                since = None if window is None else time.time() - window
                if since is not None and since <= head[1]:
                    since = None  # the stream holds nothing older: read it all, once
                found: dict[str, float] = {}
                _newest_of(reader.records(since), found)
                if found or since is None:
                    newest.update({run: max(t, newest.get(run, 0.0)) for run, t in found.items()})
                    break
        for path in self.cache.glob("*.jsonl") if self.settings is None else ():
            _newest_of(_read_lines(path), newest)
        return max(newest, key=newest.__getitem__) if newest else None

    def all_records(self) -> Iterator[dict]:
        """Everything: older files first, then the whole stream (or, offline, the copies)."""
        yield from self.legacy.events()
        reader = self.reader()
        if reader is not None:
            yield from reader.records()
        else:
            for path in sorted(self.cache.glob("*.jsonl")):
                yield from _read_lines(path)

    # --- one run ---------------------------------------------------------------------------
    def run_records(self, run_id: str) -> Callable[[], Iterable[dict]]:
        """A function giving *run_id*'s records (tasks, the run's notes, worker totals) each
        time it is called: read from the broker once, then from the local copy."""
        path = self.copy_path(run_id)
        reader = self.reader()
        if reader is not None:
            self._fetch(reader, run_id, path)
        legacy = self.legacy.path

        def records() -> Iterator[dict]:
            if legacy.exists():
                yield from (e for e in self.legacy.events() if _of_run(e, run_id))
            if path.exists():
                yield from _read_lines(path)

        return records

    def copy_path(self, run_id: str) -> Path:
        """Where the local copy of *run_id*'s records is kept."""
        return self.cache / f"{safe_name(run_id)}.jsonl"

    def _fetch(self, reader: RecordReader, run_id: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        began = run_began(run_id)
        started_seen = False
        with open(tmp, "w", encoding="utf-8") as spool:
            for record in reader.records(began):
                if _of_run(record, run_id):
                    started_seen |= kind_of(record) == "run" and record.get("state") == "started"
                    spool.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
        if reader.missing:
            return
        head = reader.head()
        if head is not None and head[0] > 0 and not started_seen:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(head[1]))
            self.retention_note = (
                f"part of run {run_id} may be past the results stream's retention: its "
                f"records from before {when} are removed (x-max-age / x-max-length-bytes of "
                f"{self.spec.results_name!r})")


def _of_run(record: dict, run_id: str) -> bool:
    if kind_of(record) == "worker":
        return run_id in (record.get("runs") or {})
    return kind_of(record) in ("task", "run") and (record.get("run_id") or "") == run_id


def _newest_of(records: Iterable[dict], newest: dict[str, float]) -> None:
    for record in records:
        if kind_of(record) == "task":
            run = record.get("run_id") or ""
            newest[run] = max(newest.get(run, 0.0), float(record.get("finished") or 0))


def _read_lines(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn line from a crash
            if isinstance(record, dict):
                yield record


def safe_name(run_id: str) -> str:
    """A run id as a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)[:80] or "_none"
