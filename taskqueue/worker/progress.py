"""``taskqueue.progress(fraction, note="")``: a handler tells how far its task is.

The call is cheap whatever its rate (a few hundred nanoseconds): it only keeps the latest
value. Where it goes depends on where the handler runs:

  in a handler's child process (``--handler``, the default): a ``ChildReporter`` sends the
      latest value to the worker over the child's pipe from a thread of its own, at most every
      ``SEND_SECONDS`` and once more, the last one, just before the task's answer; the handler
      never waits for the pipe;
  in the worker itself (``--in-process``): the slot's ``ProgressBox``, directly, for calls on
      the slot's thread (threads the handler starts are not followed there);
  anywhere else (a script, a test, a handler called by hand): nothing, silently.

A fraction that is not a number from 0 to 1 is ignored, with one line on stderr the first
time in a process; a note is any text, cut to MAX_NOTE bytes when it is sent (wire/progress.py).
The worker reads a slot's ``ProgressBox`` for its live snapshots and for the attempt's record.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable

from taskqueue.wire.progress import fraction_of, progress_field

SEND_SECONDS = 0.25  # a child sends its latest progress at most this often
_said: set[str] = set()


def say_once(what: str, text: str) -> None:
    """One line on stderr the first time *what* happens in this process."""
    if what in _said:
        return
    _said.add(what)
    with contextlib.suppress(OSError, ValueError):  # no stderr (a service): ignored all the same
        print(f"taskqueue.progress: {text} (said once)", file=sys.stderr, flush=True)


class ProgressBox:
    """One slot's latest progress: written by whatever runs its task (the slot's thread, a
    program's output reader), read by the I/O thread. One reference assignment each way: the
    GIL keeps it whole, no lock is needed."""

    def __init__(self) -> None:
        self._latest: tuple[float, object] | None = None
        self._shown: tuple[float, object] | None = None  # the latest a snapshot took

    def offer(self, fraction: float, note: object) -> None:
        self._latest = (fraction, note)

    def clear(self) -> None:
        self._latest = None

    def value(self) -> dict | None:
        """The wire form of the latest progress (wire/progress.py), None before any."""
        latest = self._latest
        return None if latest is None else progress_field(*latest)

    def for_snapshot(self) -> dict | None:
        """``value()``, noted as shown: ``fresh()`` is False until the next change."""
        latest = self._shown = self._latest
        return None if latest is None else progress_field(*latest)

    def fresh(self) -> bool:
        """A change no snapshot has shown yet (the worker may send one sooner for it)."""
        return self._latest is not self._shown


class ChildReporter:
    """The handler child's side: ``offer`` keeps the latest value; a thread sends it while a
    task runs, at most every SEND_SECONDS; ``task_ended`` sends the last one not sent yet.
    *send* is the child's pipe, shared with its answers (hence the lock). A task that never
    reports costs two uncontended lock turns: the thread sleeps until a first ``offer``
    wakes it, and goes back to sleep once no task runs."""

    def __init__(self, send: Callable[[object], None], lock: threading.Lock) -> None:
        self._send, self._lock = send, lock
        self._latest: tuple[float, object] | None = None
        self._sent: tuple[float, object] | None = None
        self._running = False  # a task runs (changed under the lock)
        self._woken = False
        self._wake = threading.Event()
        threading.Thread(target=self._loop, name="progress sender", daemon=True).start()

    def offer(self, fraction: float, note: object) -> None:
        self._latest = (fraction, note)
        if not self._woken:  # the first call of a while: the sender starts its rounds
            self._woken = True
            self._wake.set()

    def task_started(self) -> None:
        with self._lock:
            self._latest = self._sent = None
            self._running = True

    def task_ended(self) -> None:
        """Before the task's answer: its last progress, so that the record keeps it."""
        with self._lock:
            self._send_latest()
            self._running = False

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(SEND_SECONDS)  # coalesced: only the latest value goes
            with self._lock:
                if not self._running:  # between tasks: sleep until the next first call
                    self._woken = False
                    self._wake.clear()
                    continue
                try:
                    self._send_latest()
                except (OSError, ValueError):  # the worker is gone: the parent watch ends us
                    return

    def _send_latest(self) -> None:
        latest = self._latest
        if latest is None or latest is self._sent:
            return
        self._sent = latest
        self._send(("progress", progress_field(*latest)))


class _Where(threading.local):
    box: ProgressBox | None = None


_here = _Where()  # an --in-process handler's slot thread: its slot's box
_child: ChildReporter | None = None  # a handler's child process: its reporter


def report_from_child(reporter: ChildReporter | None) -> None:
    """In a handler's child process (child.py): calls anywhere in it go to *reporter*."""
    global _child
    _child = reporter


class ReportingTo:
    """``with ReportingTo(box):`` calls on this thread go to *box* (an --in-process handler)."""

    def __init__(self, box: ProgressBox) -> None:
        self.box = box

    def __enter__(self) -> None:
        _here.box = self.box

    def __exit__(self, *_exc: object) -> None:
        _here.box = None


def progress(fraction: float, note: str = "") -> None:
    """Say how far the task in hand is: *fraction* from 0 to 1, and an optional short *note*
    (``progress(0.4, "step 2 of 5")``). The live views show each busy slot's latest; the
    attempt's record keeps the last. Outside a worker's task it does nothing."""
    sink = _here.box or _child
    if sink is None:
        return
    if fraction.__class__ is not float or not 0.0 <= fraction <= 1.0:  # the usual case: fast
        checked = fraction_of(fraction)
        if checked is None:
            say_once("fraction", f"ignored {fraction!r}: give a number from 0 to 1")
            return
        fraction = checked
    sink.offer(fraction, note)
