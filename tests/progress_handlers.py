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


def spin(text: str) -> str:
    """``N`` or ``N progress``: N loop rounds of light work, calling taskqueue.progress in
    every round with 'progress' (the overhead benchmark)."""
    count, _, how = text.partition(" ")
    rounds, report = int(count), how == "progress"
    total = 0
    for index in range(rounds):
        total += sum(range(60))
        if report:
            taskqueue.progress(index / rounds, "spinning")
    return str(total)
