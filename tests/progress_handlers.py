"""Task handlers that report progress, for tests/test_progress.py and bench/progress.py
(loaded with --handler tests.progress_handlers:NAME)."""

from __future__ import annotations

import time
from pathlib import Path

import taskqueue

HOSTILE_NOTE = "\x1b[31mred\x07 \u202eevil\u202c " + "x" * 10_000


def steps_then_wait(text: str) -> str:
    """``PATH``: step 2 of 5 reached (40%), then wait until the file PATH exists (the test
    creates it once it has seen the progress), then step 5 of 5."""
    taskqueue.progress(0.2, "step 1 of 5")
    taskqueue.progress(0.4, "step 2 of 5")
    release = Path(text)
    while not release.exists():
        time.sleep(0.02)
    taskqueue.progress(1.0, "step 5 of 5")
    return "finished"


def hostile_then_wait(text: str) -> str:
    """Bad fractions (ignored, never a failure), then a hostile note, then wait for PATH."""
    for bad in (1.5, -0.1, float("nan"), "half", None, True):
        taskqueue.progress(bad, "bad")  # type: ignore[arg-type]
    taskqueue.progress(0.5, HOSTILE_NOTE)
    release = Path(text)
    while not release.exists():
        time.sleep(0.02)
    return "survived"


MARKUP_NOTE = '<img src=x onerror="window.pwned=1">\x1b[31m \u202eevil'


def markup_then_wait(text: str) -> str:
    """A note with HTML, a control character and a right-to-left override, then wait for the
    file named by the task's text."""
    taskqueue.progress(0.65, MARKUP_NOTE)
    release = Path(text)
    while not release.exists():
        time.sleep(0.02)
    return "done"


def spin(text: str) -> str:
    """``ROUNDS WORK [progress]``: ROUNDS rounds of WORK steps of light work, calling
    taskqueue.progress once a round with 'progress'; the loop's own seconds as the result
    (bench/progress.py: the overhead of frequent calls)."""
    rounds_text, work_text, *how = text.split()
    rounds, work, report = int(rounds_text), int(work_text), how == ["progress"]
    began = time.perf_counter()
    total = 0
    for index in range(rounds):
        total += sum(range(work))
        if report:
            taskqueue.progress(index / rounds, "spinning")
    return f"{time.perf_counter() - began:.6f}"
