"""The handler of scripts/screenshots.py's demo runs: a page per '.' (0.3 s each, its progress
told with taskqueue.progress); "boom" files fail every time (dead after the retry), "flaky"
ones fail their first attempt only (a marker file in $SCREENS_DIR says it was tried)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import taskqueue

STEP_SECONDS = 0.3


def convert(text: str) -> str:
    name, pages = text.split()[1], text.count(".")
    for page in range(1, pages + 1):
        taskqueue.progress((page - 1) / pages, f"page {page} of {pages}")
        time.sleep(STEP_SECONDS)
        if "boom" in name and page == 2:
            raise ValueError(f"cannot decode {name!r}: page {page} is not a TIFF image")
    if "flaky" in name:
        marker = Path(os.environ["SCREENS_DIR"]) / name
        if not marker.exists():
            marker.touch()
            raise ConnectionError("storage at 10.0.0.7:9000 timed out after 30 s")
    return f"{name} -> {name.rsplit('.', 1)[0]}.pdf ({pages} pages)"


def fetch(text: str) -> str:
    """A page fetch (the rate-limited queue's tasks): a step per '.' after the address."""
    address, steps = text.split()[1], text.split()[-1].count(".")
    for step in range(1, steps + 1):
        taskqueue.progress((step - 1) / steps, f"part {step} of {steps}")
        time.sleep(STEP_SECONDS)
    return f"{address}: 200 OK ({steps * 12} kB)"
