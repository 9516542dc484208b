"""Ending workers that a test started before its tasks were there (issue 28, item 8).

A worker with a short ``--exit-when-idle`` started before the publish races it: on a slow
broker (4.3, Wine, a loaded machine) the timer runs out first and the worker leaves with the
test's tasks still to come. Where the workers must run first (fair sharing, redelivery, faults)
they get no idle exit at all; the test waits for what it is about (every row settled, the queue
drained) and then ends them with the product's own graceful stop, ``task_control.py
stop-workers``: it works on every OS, and the command lives in the queue's control stream, so a
worker that is reconnecting at that moment still reads it when it is back.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from tests.helpers import (
    MAIN_URL,
    OUTPUT_OF,
    last_said,
    queue_state,
    run_script,
    settled_rows,
    wait_for,
)

STOP_WAIT = 120  # seconds a stopped worker may take to finish what it holds and leave


def stop_workers(queue: str, workers: Iterable[subprocess.Popen], *, log_dir: Path,
                 url: str = MAIN_URL) -> list[int]:
    """Ask every worker of *queue* to stop (as SIGTERM would) and return their exit codes."""
    asked = run_script("task_control.py", "stop-workers", "--url", url, "--queue", queue,
                       log_dir=log_dir, timeout=60)
    assert asked.returncode == 0, asked.stdout + asked.stderr
    return [_exit_code(worker, asked.stdout) for worker in workers]


def _exit_code(worker: subprocess.Popen, answers: str) -> int:
    """The stopped *worker*'s exit code; one that does not leave fails the test with who
    answered the stop, what it said last and, on POSIX, what each of its threads was doing
    (a hang at exit is a defect to see, not a timeout to read)."""
    try:
        return worker.wait(timeout=STOP_WAIT)
    except subprocess.TimeoutExpired:
        said = last_said(worker, 40)
        raise AssertionError(f"a worker did not leave {STOP_WAIT} s after the stop "
                             f"(task_control.py: {answers.strip()}); its first warnings:\n"
                             f"{warnings_of(worker)}\nit said last:\n{said}\n"
                             f"its threads:\n{threads_of(worker)}") from None


def warnings_of(worker: subprocess.Popen, most: int = 10) -> str:
    """The first *most* WARNING lines a worker printed: the one that explained stops 37 and 38's
    hangs ("cannot read the control stream …") was long gone from its last lines."""
    out = OUTPUT_OF.get(worker.pid)
    if out is None or not out.exists():
        return "(no output file)"
    lines = [line for line in out.read_text(errors="replace").splitlines() if " WARNING " in line]
    return "\n".join(lines[:most]) or "(none)"


def threads_of(worker: subprocess.Popen) -> str:
    """Every thread's stack of a running *worker*: SIGUSR1 makes it print them (cli.py's
    ``on_dump_signal``) after what it had said."""
    out = OUTPUT_OF.get(worker.pid)
    if not hasattr(signal, "SIGUSR1") or out is None or worker.poll() is not None:
        return "(not available)"
    before = out.stat().st_size
    worker.send_signal(signal.SIGUSR1)
    time.sleep(2)
    with out.open("rb") as handle:
        handle.seek(before)
        return handle.read().decode(errors="replace") or "(nothing printed)"


SETTLED_LINE = re.compile(r"\] (?:done|cancelled|skipped|dead-lettered) (?:row \d+|no row), "
                          r"id (\S+)")


def settled_ids(*outputs: Path) -> set[str]:
    """The message ids the workers writing *outputs* settled for good: done, cancelled, acked
    unrun (already done) or dead-lettered. An id names a file's row in one run."""
    return {match[1] for out in outputs for match in SETTLED_LINE.finditer(out.read_text())}


def emptied(queue: str, url: str = MAIN_URL) -> bool:
    """No task waits in *queue* (held ones are not counted: a stop lets them finish)."""
    state = queue_state(queue, url)
    return state is not None and state[0] == 0


def all_settled(outs: Iterable[Path], tasks: int, queue: str,
                url: str = MAIN_URL) -> Callable[[], bool]:
    """A condition: *tasks* different tasks settled by the workers writing *outs*, and none
    waiting in *queue*."""
    outs = list(outs)
    return lambda: len(settled_ids(*outs)) >= tasks and emptied(queue, url)


def every_row_settled(outs: Iterable[Path], rows: int, queue: str,
                      url: str = MAIN_URL) -> Callable[[], bool]:
    """A condition: rows 1..*rows* of one run done (or acked unrun) by the workers writing
    *outs*, and none waiting in *queue* (a redelivered copy still on its way would be)."""
    outs = list(outs)
    return lambda: settled_rows(*outs) >= set(range(1, rows + 1)) and emptied(queue, url)


def stop_when(condition: Callable[[], object], queue: str,
              workers: Iterable[subprocess.Popen], *, log_dir: Path, url: str = MAIN_URL,
              what: str, timeout: float = 120) -> list[int]:
    """Wait until *condition* holds (the test's work is over), then stop the workers of
    *queue*; their exit codes. The wait is a bound on a hang, not a claim about speed. (Tasks
    in hand when the stop comes are finished first: the condition need not wait for acks.)"""
    wait_for(condition, timeout=timeout, interval=0.2, what=what)
    return stop_workers(queue, workers, log_dir=log_dir, url=url)
