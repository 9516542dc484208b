"""``--skip-done``: which rows of a file already have a done record, in any run.

A file's message ids are stable (``tasks.message_id``: the file's path, the row, its text), so
a row done by any earlier run of the same file has a done record with the same id. The whole
results stream is read once; per row one fingerprint of the done id is kept (``RunIndex``:
4 bytes a row), whatever the number of runs: memory stays flat.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from taskqueue.emitter.tasks import Task
from taskqueue.results.index import RunIndex
from taskqueue.wire.record import kind_of


def done_ids(records: Iterable[dict], label: str) -> RunIndex:
    """The done message ids (of any run) whose label is *label* (the file's name)."""
    index = RunIndex()
    prefix = f"{label}:"
    for record in records:
        message_id = record.get("message_id")
        if (kind_of(record) == "task" and record.get("outcome") == "done"
                and isinstance(message_id, str) and message_id.startswith(prefix)):
            index.add(message_id)
    return index


class SkipDone:
    """Drop the tasks already done from a stream of tasks; ``skipped`` counts them."""

    def __init__(self, done: RunIndex) -> None:
        self.done = done
        self.skipped = 0

    def __call__(self, tasks: Iterable[Task]) -> Iterator[Task]:
        for task in tasks:
            if task.message_id in self.done:
                self.skipped += 1
            else:
                yield task
