"""Read the tasks on a thread of their own and hand them to the I/O loop in a bounded queue.

The publisher runs pika's I/O loop, which must never wait for input: a slow stdin
(``tail -f jobs.csv | emitter --file -``) would stall heartbeats and hold back rows already
read. ``TaskFeed`` reads ahead on a daemon thread, at most ``MAX_CHUNKS`` chunks (each at most
``CHUNK_TASKS`` tasks or ``CHUNK_BYTES`` bytes), and wakes the loop only when it was waiting for
input, so a fast file costs one hand-over per chunk, not one per row.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

from taskqueue.emitter.tasks import Task
from taskqueue.errors import UserError

CHUNK_TASKS = 256
CHUNK_BYTES = 256 * 1024
MAX_CHUNKS = 16
_END = object()


class TaskFeed:
    """``take()`` on the I/O thread: the next task, or None when none is ready *now*
    (``wake`` is then called from the reader thread once there is one). ``finished`` is True
    once the input is exhausted; ``error`` holds a ``UserError`` the input raised."""

    def __init__(self, tasks: Iterator[Task], wake: Callable[[], None], *,
                 interactive: bool = False) -> None:
        self._tasks = tasks
        self._wake = wake
        # Rows typed or piped in one at a time are handed over one at a time.
        self._chunk_tasks = 1 if interactive else CHUNK_TASKS
        self._chunks: queue.Queue = queue.Queue(maxsize=MAX_CHUNKS)
        self._current: list[Task] = []
        self._position = 0
        self._wanted = threading.Event()
        self.finished = False
        self.error: UserError | None = None
        threading.Thread(target=self._read, name="task-reader", daemon=True).start()

    def take(self) -> Task | None:
        if self._position < len(self._current):
            task = self._current[self._position]
            self._position += 1
            return task
        if self.finished:
            return None
        chunk = self._next_chunk()
        if chunk is None:
            return None
        self._current, self._position = chunk, 0
        return self.take()

    def _next_chunk(self) -> list[Task] | None:
        try:
            item = self._chunks.get_nowait()
        except queue.Empty:
            # Ask to be woken, then look again: a chunk put in between is not missed.
            self._wanted.set()
            try:
                item = self._chunks.get_nowait()
            except queue.Empty:
                return None
            self._wanted.clear()
        if item is _END:
            self.finished = True
            return None
        if isinstance(item, UserError):
            self.error = item
            self.finished = True
            return None
        return item

    # --- the reader thread -------------------------------------------------------------
    def _read(self) -> None:
        chunk: list[Task] = []
        size = 0
        try:
            for task in self._tasks:
                chunk.append(task)
                size += len(task.body)
                if len(chunk) >= self._chunk_tasks or size >= CHUNK_BYTES:
                    self._hand_over(chunk)
                    chunk, size = [], 0
        except Exception as exc:  # a UserError from the CSV reader, or the stream failing
            error = exc if isinstance(exc, UserError) else UserError(
                f"cannot read the tasks ({exc})")
            if chunk:
                self._hand_over(chunk)
            self._hand_over(error)
            return
        if chunk:
            self._hand_over(chunk)
        self._hand_over(_END)

    def _hand_over(self, item: object) -> None:
        self._chunks.put(item)  # blocks while MAX_CHUNKS wait: memory stays bounded
        if self._wanted.is_set():
            self._wanted.clear()
            self._wake()
