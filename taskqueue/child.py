"""The child process that runs a ``--handler`` (see ``IsolatedHandler`` in work.py).

It loads the handler once, says "ready", then answers one message per task: the task text in,
``("ok", result text)`` or ``("error", reason)`` out. Any BaseException a handler raises
(SystemExit included) is that task's failure. A crash of this process is seen by the parent
through the process sentinel; end of input (the parent closed the pipe, or died) ends it.
"""

from __future__ import annotations

import signal
from multiprocessing.connection import Connection


def serve(pipe: Connection, spec: str) -> None:
    # Ctrl+C in a terminal reaches every process of the group; the worker decides what a
    # Ctrl+C means (finish the tasks in hand), so the child must not die of it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from taskqueue.errors import UserError
    from taskqueue.work import failure_reason, load_handler, result_text

    try:
        handler = load_handler(spec)
    except UserError as error:
        pipe.send(("load-error", str(error)))
        return
    pipe.send(("ready", None))
    while True:
        try:
            text = pipe.recv()
        except (EOFError, OSError):
            return
        if text is None:
            return
        try:
            reply = ("ok", result_text(handler(text)))
        except BaseException as exc:
            reply = ("error", failure_reason(exc))
        try:
            pipe.send(reply)
        except (OSError, ValueError):
            return
