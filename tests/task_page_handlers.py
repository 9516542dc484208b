"""Handlers for the task page tests (tests/test_web_task_page.py, tests/test_discard.py)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# Past the 1,000 characters a dead copy's x-death-reason (and the dead list) keeps, within the
# 2,000 bytes a record keeps (wire/events.py MAX_REASON).
DETAIL = "the full error goes on " * 60 + "END-OF-ERROR"


def flaky_or_doomed(text: str) -> str:
    """'doomed' tasks always fail, with a long second line ('cursed' ones too, shortly);
    'flaky' ones fail their first attempt only (a marker file per task in $FLAKY_DIR); the
    rest return the text in capitals."""
    if "cursed" in text:
        raise KeyError("a curse")
    if "doomed" in text:
        raise ValueError(f"cannot handle {text!r}\n{DETAIL}")
    if "flaky" in text:
        marker = Path(os.environ["FLAKY_DIR"]) / hashlib.sha1(text.encode()).hexdigest()
        if not marker.exists():
            marker.touch()
            raise RuntimeError("first try fails")
    return text.upper()
