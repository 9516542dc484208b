"""How a slot does a task: the work itself, and stopping it for real.

A ``Runner`` belongs to one slot and runs one task at a time on that slot's thread:
``run(text)`` blocks until the work is done, failed or timed out and returns an ``Outcome``;
it never raises. ``interrupt()`` (from any thread) stops the task in hand at once.

  ``SimulatedWork``   the demo: a fixed time per '.' (an interruptible wait, so a timeout or a
                      lost connection really ends it);
  ``IsolatedHandler`` ``--handler`` in a long-lived child process (the default): a handler that
                      crashes its process (os._exit, a signal, a segfault, the OOM killer) or
                      outlives ``--task-timeout`` costs one attempt and one new child, never the
                      worker. The process is started with ``spawn`` on every platform: nothing
                      here needs fork, SIGALRM or SIGUSR1, so it works on Windows too. On POSIX
                      it leads a process group of its own: a task stopped (a timeout, a cancel)
                      ends whatever the handler started too, as for a ``--command`` program;
  ``InProcessHandler`` ``--handler --in-process``: a plain call (no isolation, no timeout);
  ``CommandWork``     ``--command``: a program per task (command.py).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for_any
from typing import TYPE_CHECKING, Any

from taskqueue.errors import UserError
from taskqueue.wire.progress import read_progress
from taskqueue.worker.child import serve
from taskqueue.worker.handler import failure_reason, result_text
from taskqueue.worker.handler import load_handler as load_handler  # commands/worker.py's import
from taskqueue.worker.progress import ProgressBox, ReportingTo
from taskqueue.worker.reaper import REAPER

if TYPE_CHECKING:  # what a spawn context's Pipe() gives on each OS
    if sys.platform == "win32":
        from multiprocessing.connection import PipeConnection as ChildPipe
    else:
        from multiprocessing.connection import Connection as ChildPipe

CHILD_START_SECONDS = 60.0  # a handler module slower than this to import is reported


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: ``ok`` with an optional ``result`` text, or a ``reason``."""

    ok: bool
    result: str | None = None
    reason: str = ""


def timed_out(seconds: float) -> Outcome:
    return Outcome(False, reason=f"timed out after {seconds:g} s")


class Runner:
    """One slot's way of working. Subclasses override ``run`` (and ``interrupt``)."""

    timeout: float | None = None
    progress = ProgressBox()  # written, never read, until a slot gives its own (report_to)

    def report_to(self, box: ProgressBox) -> None:
        """The task's progress (taskqueue.progress, a program's progress lines) goes to *box*."""
        self.progress = box

    def start(self) -> None:
        """Get ready before the first task (e.g. start a child process); may raise UserError."""

    def instant(self, text: str) -> bool:
        """True when the task needs no time at all (it may then run on the I/O thread)."""
        return False

    def expected_seconds(self, text: str) -> float:
        return 0.0

    def run(self, text: str) -> Outcome:
        raise NotImplementedError

    def interrupt(self) -> None:
        """Stop the task in hand now (its outcome is then a failure nobody acks)."""

    def close(self) -> None:
        self.interrupt()


class SimulatedWork(Runner):
    """Sleep ``seconds_per_dot`` per '.' in the text, interruptibly."""

    def __init__(self, seconds_per_dot: float, timeout: float | None = None) -> None:
        self.seconds_per_dot, self.timeout = seconds_per_dot, timeout
        self._interrupted = threading.Event()

    def instant(self, text: str) -> bool:
        return self.expected_seconds(text) == 0  # sleep(0) would still yield the CPU: ~80 us

    def expected_seconds(self, text: str) -> float:
        return text.count(".") * self.seconds_per_dot  # the demo's rule: a fixed time per '.'

    def run(self, text: str) -> Outcome:
        seconds = self.expected_seconds(text)
        if seconds <= 0:
            return Outcome(True)
        self._interrupted.clear()
        limit = seconds if self.timeout is None else min(seconds, self.timeout)
        if self._interrupted.wait(limit):
            return Outcome(False, reason="stopped")
        if self.timeout is not None and seconds > self.timeout:
            return timed_out(self.timeout)
        return Outcome(True)

    def interrupt(self) -> None:
        self._interrupted.set()


class InProcessHandler(Runner):
    """``--in-process``: call the handler on the slot's thread. It cannot be stopped: no
    ``--task-timeout``, and a handler that crashes the process takes the worker with it."""

    def __init__(self, handler: Callable[[str], object]) -> None:
        self.handler = handler

    def run(self, text: str) -> Outcome:
        try:
            with ReportingTo(self.progress):
                return Outcome(True, result_text(self.handler(text)))
        except BaseException as exc:  # SystemExit, KeyboardInterrupt too: this attempt failed
            return Outcome(False, reason=failure_reason(exc))


def died_how(exitcode: int | None) -> str:
    if exitcode is None:
        return "it stopped answering"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"killed by {name}"
    return f"exited with code {exitcode}"


def serve_in_own_group(pipe: Connection, spec: str) -> None:
    """The handler child's start (``spawn`` imports it by name): on POSIX, a process group of
    its own first, so that one ``killpg`` ends the handler and every process it started."""
    if sys.platform != "win32":
        os.setpgid(0, 0)
    serve(pipe, spec)


def kill_group(process: multiprocessing.process.BaseProcess) -> None:
    """SIGKILL the process group *process* leads (POSIX), then *process* itself: its group may
    not be made yet (killed in its first instant), or the process is gone and its children
    linger in the group."""
    pid = process.pid
    if sys.platform != "win32" and pid is not None:
        with contextlib.suppress(OSError):  # no such group: nothing of it is left
            os.killpg(pid, signal.SIGKILL)
    if process.is_alive():
        process.kill()  # SIGKILL, or TerminateProcess on Windows


class IsolatedHandler(Runner):
    """The handler in a child process of its own, kept for task after task (a task costs a
    message each way on a pipe, tens of microseconds) and replaced only after it died or was
    killed for outliving ``timeout``."""

    def __init__(self, spec: str, timeout: float | None = None, label: str = "") -> None:
        self.spec, self.timeout, self.label = spec, timeout, label
        self._context = multiprocessing.get_context("spawn")
        self._process: multiprocessing.process.BaseProcess | None = None
        self._pipe: ChildPipe | None = None
        self._lock = threading.Lock()  # interrupt() comes from another thread

    def start(self) -> None:
        """Start the child and wait until it has loaded the handler (UserError if it can't)."""
        self.spawn()
        self.wait_ready()

    def spawn(self) -> None:
        """Start the child (``wait_ready`` then waits for it to have loaded the handler)."""
        parent, child = self._context.Pipe()
        process = self._context.Process(target=serve_in_own_group, args=(child, self.spec),
                                        name=f"handler {self.label}".strip(), daemon=True)
        process.start()
        child.close()
        if process.pid is not None:
            REAPER.watch(process.pid)  # what the handler starts dies with the worker too
        with self._lock:
            self._process, self._pipe = process, parent

    def wait_ready(self) -> None:
        process, pipe = self._process, self._pipe
        assert process is not None and pipe is not None  # spawn() set them
        ready = _answered_or_ended(pipe, process, CHILD_START_SECONDS)
        kind, value = "died", ""
        if pipe in ready:
            with contextlib.suppress(EOFError):
                kind, value = pipe.recv()
        if kind == "ready":
            return
        self.close()
        if kind == "load-error":
            raise UserError(value)
        why = died_how(process.exitcode) if ready else \
            f"it took longer than {CHILD_START_SECONDS:g} s"
        raise UserError(f"the --handler {self.spec!r} could not be loaded in a child process "
                        f"({why})")

    def run(self, text: str) -> Outcome:
        with self._lock:  # interrupt() may clear them from another thread at any moment
            process, pipe = self._process, self._pipe
        if process is None or pipe is None or not process.is_alive():  # both or neither
            try:
                self.start()
            except (UserError, OSError) as error:
                return Outcome(False, reason=f"handler process could not start: {error}")
            with self._lock:
                process, pipe = self._process, self._pipe
            if process is None or pipe is None:
                return Outcome(False, reason="stopped")
        with contextlib.suppress(OSError, ValueError):  # it died just now (or was interrupted):
            pipe.send(text)                             # the sentinel says how
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                ready = _answered_or_ended(pipe, process, left)
            except (OSError, ValueError):  # interrupt() closed the pipe under us
                return Outcome(False, reason="stopped")
            if pipe not in ready:
                break
            try:
                kind, value = pipe.recv()
            except (EOFError, OSError, ValueError):
                break  # the child died before it could answer (or was interrupted)
            if kind == "progress":  # the handler's latest progress: the answer is still to come
                self._progress_from_child(value)
                continue
            return Outcome(True, value) if kind == "ok" else Outcome(False, reason=value)
        if not ready and self.timeout is not None:  # (without a timeout, wait() never is)
            self._kill()
            return timed_out(self.timeout)
        self._kill()
        return Outcome(False, reason=f"handler process died: {died_how(process.exitcode)}")

    def _progress_from_child(self, value: object) -> None:
        progress = read_progress(value)
        if progress is not None:
            self.progress.offer(*progress)

    def _kill(self) -> None:
        with self._lock:
            process, pipe = self._process, self._pipe
            self._process = self._pipe = None
        if process is not None:
            kill_group(process)
            process.join(5)
            if process.pid is not None:
                REAPER.forget(process.pid)
        if pipe is not None:
            pipe.close()

    def interrupt(self) -> None:
        self._kill()

    def close(self) -> None:
        """Let an idle child exit on its own (it reads EOF), else kill it."""
        with self._lock:
            pipe = self._pipe
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.send(None)
        process = self._process
        if process is not None:
            process.join(0.5)
        self._kill()


def _answered_or_ended(pipe: ChildPipe, process: multiprocessing.process.BaseProcess,
                       timeout: float | None) -> list[Any]:
    """Which of the child's pipe (an answer) and its sentinel (it ended) are ready."""
    waitables: list[Any] = [pipe, process.sentinel]  # typeshed's wait() omits PipeConnection
    return wait_for_any(waitables, timeout)


def start_runners(runners: list[IsolatedHandler]) -> None:
    """Start every child at once (each takes a moment to import), then wait for all; if one
    cannot load the handler, stop them all and raise its UserError."""
    try:
        for runner in runners:
            runner.spawn()
        for runner in runners:
            runner.wait_ready()
    except BaseException:
        for runner in runners:
            runner.close()
        raise
