"""The outbox's journal side (journal.py is the file): while the broker blocks publishing (a
memory or disk alarm), a finished task's record and copy are written to the journal, fsynced,
and the task is acked; once the broker takes publishes again, the journal (and those of dead
workers of this host, taken over by an atomic rename) is handed back to the outbox to publish,
and each file is deleted once the broker has confirmed all of it. ``JournalKeeper`` is given
the outbox's two queues (``enqueue_copy``, ``enqueue_record``); it never publishes itself."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pika

from taskqueue.worker.copies import Copy
from taskqueue.worker.journal import Journal, Replay

PROPERTY_NAMES = ("content_type", "content_encoding", "headers", "delivery_mode", "priority",
                  "correlation_id", "reply_to", "expiration", "message_id", "timestamp", "type",
                  "user_id", "app_id", "cluster_id")
Settled = Callable[[bool], None]


class JournalKeeper:
    def __init__(self, journal: Journal, log: logging.Logger, worker: str,
                 enqueue_copy: Callable[[Copy], None],
                 enqueue_record: Callable[[dict, Settled], None]) -> None:
        self.journal, self.log, self.worker = journal, log, worker
        self.enqueue_copy, self.enqueue_record = enqueue_copy, enqueue_record
        self.waiting: set[Callable[[], bool]] = set()  # settlements waiting for confirms
        self.copies = 0  # copies in the journal's open file
        self.look_for_orphans = True  # once per connection
        self._failed = False  # said once per alarm
        self._back_at = 0.0  # when the last .retry copy published from the journal flows back

    @property
    def records(self) -> int:
        """Records in the journal, not yet confirmed by the broker."""
        return self.journal.entries - self.copies

    @property
    def copy_due_back(self) -> bool:
        """A copy to ``.retry`` published from the journal is still on its way back: its task
        was acked during the alarm, so only this tells ``--exit-when-idle`` it comes back."""
        return time.monotonic() < self._back_at

    def blocked(self) -> None:
        """The broker blocks us: every settlement waiting for its confirms journals now."""
        self._failed = False
        for journal_it in list(self.waiting):
            journal_it()

    def write(self, record: dict | None, copy: Copy | None) -> bool:
        """*record* and *copy* in the journal, fsynced; False if it cannot be written."""
        entries: list[dict] = [] if record is None else [{"record": record}]
        if copy is not None:
            properties = {name: getattr(copy.properties, name, None) for name in PROPERTY_NAMES}
            entries.append({"copy": {"routing_key": copy.routing_key, "body": copy.body,
                                     "properties": properties}})
        try:
            self.journal.append(entries)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                self.log.error("[%s] cannot write the journal %s (%s): finished tasks wait for "
                               "the alarm to end", self.worker, self.journal.directory, exc)
            return False
        self.copies += copy is not None
        return True

    def publish(self) -> None:
        """Not blocked: the file an alarm filled, and (once per connection) those of workers
        of this host that died, go to the outbox's queues; each is deleted once the broker has
        it all."""
        paths: list[Path] = []
        if self.look_for_orphans:
            self.look_for_orphans = False
            try:
                paths = self.journal.take_orphans()
            except OSError as exc:
                self.log.warning("[%s] cannot look for journals left behind in %s (%s)",
                                 self.worker, self.journal.directory, exc)
        own = self.journal.seal()
        if own is not None:
            paths.append(own)
            self.copies = 0
        for path in paths:
            self._publish_file(path)

    def _publish_file(self, path: Path) -> None:
        try:
            entries, unreadable = self.journal.read(path)
        except OSError as exc:
            self.log.warning("[%s] cannot read the journal %s (%s)", self.worker, path, exc)
            return
        if unreadable:  # a kill in the middle of a write: that task was not acked
            self.log.warning("[%s] %d unreadable line(s) in the journal %s", self.worker,
                             unreadable, path)
        self.log.info("[%s] publishing %d outcome(s) kept in the journal %s", self.worker,
                      len(entries), path.name)
        replay = Replay(self.journal, path, len(entries))
        for entry in entries:
            settled = partial(self._replayed, replay, entry)
            if isinstance(entry.get("copy"), dict):
                copy = entry["copy"]
                self.enqueue_copy(Copy(copy["routing_key"], copy["body"], pika.BasicProperties(
                    **copy["properties"]), settled))
            else:
                self.enqueue_record(entry.get("record") or {}, settled)
        if not entries:
            self._replayed(replay, {}, True)

    def _replayed(self, replay: Replay, entry: dict, ok: bool) -> None:
        if not ok:
            self.log.error("[%s] the broker would not take an outcome from the journal; it "
                           "stays in %s", self.worker, replay.path)
        expiration = ok and (entry.get("copy") or {}).get("properties", {}).get("expiration")
        if expiration and str(expiration).isdigit():  # a copy to .retry: back after its delay
            # (and a second for the broker to move it from .retry back to the task queue)
            self._back_at = max(self._back_at, time.monotonic() + int(expiration) / 1000 + 1)
        try:
            replay.settled(entry, ok)
        except OSError as exc:  # published again later: readers count each record once
            self.log.warning("[%s] cannot remove %s (%s)", self.worker, replay.path, exc)
