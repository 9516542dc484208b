"""A handler for tests/test_web_runs_live.py, loaded by the worker with --handler
tests.runs_live_handlers:late_once."""

from pathlib import Path


def late_once(text: str) -> str:
    """Sleeps 0.1 s per '.'; a task "late:<path> ..." fails its first attempt (it leaves a file
    at <path>, so the retry, after the worker's --retry-delay, succeeds)."""
    import time

    time.sleep(0.1 * text.count("."))
    first = text.split(" ", 1)[0]
    if first.startswith("late:"):
        mark = Path(first.removeprefix("late:"))
        if not mark.exists():
            mark.touch()
            raise ValueError("first attempt of a late task fails")
    return text.upper()
