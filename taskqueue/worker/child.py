"""The child process that runs a ``--handler`` (``IsolatedHandler`` in work.py starts it).

It loads the handler once, says "ready", then answers one message per task: the task text in,
``("ok", result text)`` or ``("error", reason)`` out, after any number of
``("progress", {"fraction": .., "note": ..})`` (the handler's ``taskqueue.progress`` calls,
coalesced: worker/progress.py). Any BaseException a handler raises
(SystemExit included) is that task's failure. A crash of this process is seen by the parent
through the process sentinel; end of input (the parent closed the pipe, or died) ends it.

It dies with the worker: a thread watches the parent's sentinel (a pipe on POSIX, the process
handle on Windows) and ends this process the moment the worker is gone, even in the middle of
a task (a SIGKILLed worker cannot stop it; the broker hands the task to another worker, and
the task must not run twice at once).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from multiprocessing.connection import Connection, wait

from taskqueue.errors import UserError
from taskqueue.worker.handler import failure_reason, load_handler, result_text
from taskqueue.worker.progress import ChildReporter, report_from_child

EXIT_PARENT_GONE = 75


def die_with_parent() -> None:
    """End this process as soon as the process that started it ends."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(EXIT_PARENT_GONE)

    threading.Thread(target=watch, name="parent watch", daemon=True).start()


def serve(pipe: Connection, spec: str) -> None:
    # Ctrl+C in a terminal reaches every process of the group; the worker decides what a
    # Ctrl+C means (finish the tasks in hand), so the child must not die of it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    # A spawned process starts afresh: make its print safe as the worker's own (a handler
    # printing non-Latin text to a redirected cp1252 stdout must not fail its task).
    from taskqueue.log import safe_console

    safe_console()
    try:
        handler = load_handler(spec)
    except UserError as error:
        pipe.send(("load-error", str(error)))
        return
    pipe.send(("ready", None))
    lock = threading.Lock()  # the progress sender's thread shares the pipe
    reporter = ChildReporter(pipe.send, lock)
    report_from_child(reporter)
    while True:
        try:
            text = pipe.recv()
        except (EOFError, OSError):
            return
        if text is None:
            return
        reporter.task_started()
        try:
            reply = ("ok", result_text(handler(text)))
        except BaseException as exc:
            reply = ("error", failure_reason(exc))
        try:
            reporter.task_ended()
            with lock:
                pipe.send(reply)
        except (OSError, ValueError):
            return
