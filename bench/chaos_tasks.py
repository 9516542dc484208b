"""The chaos run's work (bench/chaos.py), the same for every kind of worker. A task's text is
``<kind> <n><dots>``: 50 ms of work per '.', and by kind:

  ok     succeed                     raise  fail (an exception, or exit code 3)
  hang   outlive --task-timeout      kill   kill the process the work runs in

A simulated worker only sees the dots (a hang has enough of them to time out); a handler
worker calls ``work``; a command worker runs ``chaos_task.sh``, which does the same in sh.
"""

from __future__ import annotations

import os
import signal
import time

SECONDS_PER_DOT = 0.05


def work(text: str) -> str:
    kind = text.split(" ", 1)[0]
    if kind == "raise":
        raise RuntimeError(f"failing on purpose: {text}")
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "hang":
        time.sleep(3600)
    time.sleep(text.count(".") * SECONDS_PER_DOT)
    return f"did {text}"
