"""Work slots: a worker runs up to ``--concurrency`` tasks at once, one per slot.

A ``WorkSlot`` owns a ``Runner`` (work.py) and a thread to run it on, so that pika's I/O loop
keeps answering heartbeats whatever the work does. The consumer hands it a delivery with
``assign``; the outcome comes back to the I/O thread through ``call_threadsafe`` (pika's
documented pattern), where the consumer settles it. A slot holds its delivery until the consumer
``release``s it: once its record (and copy) are on their way (the settlement is set apart and
acks by itself: life.py), or once it is acked, put back or dropped. The broker's prefetch still
counts it until the ack: the slot may take a task already in hand, never one more from the
broker.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from taskqueue.worker.delivery import Delivery
from taskqueue.worker.progress import ProgressBox
from taskqueue.worker.work import Outcome, Runner, failure_reason

if TYPE_CHECKING:  # the consumer gives it; a runtime import would load the outbox here
    from taskqueue.worker.settlement import Settlement

OutcomeCallback = Callable[["WorkSlot", Delivery, Outcome], None]


def slot_names(worker: str, count: int) -> list[str]:
    """``alice`` for one slot; ``alice/1`` ... ``alice/N`` for several."""
    return [worker] if count == 1 else [f"{worker}/{n}" for n in range(1, count + 1)]


class WorkSlot:
    """One task at a time, on a thread of its own (started lazily, only if a task needs it)."""

    def __init__(self, name: str, runner: Runner, on_outcome: OutcomeCallback,
                 call_threadsafe: Callable[[Callable[[], None]], None]) -> None:
        self.name = name
        self.runner = runner
        self.progress = ProgressBox()  # the task in hand's latest (taskqueue.progress)
        runner.report_to(self.progress)
        self.delivery: Delivery | None = None
        self.settlement: Settlement | None = None  # the consumer's, of the delivery in hand
        # Waiting for its turn under a rate limit (rate_wait.py): {"key", "until"} (epoch s).
        self.rate_wait: dict | None = None
        self.idle_since = time.time()
        self.done = self.failed = 0
        self.busy_seconds = 0.0
        self._on_outcome = on_outcome
        self._call_threadsafe = call_threadsafe
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def assign(self, delivery: Delivery) -> None:
        """Start *delivery*'s work. Instant work runs here, on the I/O thread: handing it to
        the slot's thread and back would cost two thread switches for nothing."""
        self.delivery = delivery
        self.progress.clear()
        delivery.started = time.time()
        if self.runner.instant(delivery.text):
            self._on_outcome(self, delivery, Outcome(True))
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"slot {self.name}",
                                            daemon=True)  # daemon: a 2nd Ctrl+C can exit
            self._thread.start()
        self._jobs.put(delivery)

    def release(self, seconds: float) -> None:
        """The delivery is settled (or given up): the slot takes the next task."""
        self.delivery = None
        self.rate_wait = None
        self.progress.clear()  # a record made before the next task's work is not given this one's
        self.busy_seconds += seconds
        self.idle_since = time.time()

    def interrupt(self) -> None:
        """Stop the task in hand now (connection lost, or a second Ctrl+C)."""
        self.runner.interrupt()

    def close(self) -> None:
        self.runner.close()
        self._jobs.put(None)

    def _loop(self) -> None:
        """The thread's edge: whatever a runner does (a bug, an OS error, a task text the OS
        will not take), the delivery gets an outcome and the slot takes the next task."""
        while True:
            delivery = self._jobs.get()
            if delivery is None:
                return
            outcome = run_guarded(self.runner, delivery.text)
            try:
                self._call_threadsafe(partial(self._on_outcome, self, delivery, outcome))
            except BaseException:  # the I/O loop is gone (the worker is exiting): nobody acks
                return


def run_guarded(runner: Runner, text: str) -> Outcome:
    """``runner.run(text)``, with any exception it raises made a failed attempt."""
    try:
        return runner.run(text)
    except BaseException as exc:
        return Outcome(False, reason=f"the worker could not run the task: {failure_reason(exc)}")
