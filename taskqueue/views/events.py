"""Moved to taskqueue/wire/events.py (the wire vocabulary, at the bottom of the package).

Kept only for the modules that still import it from here (tests/test_layers.py lists them as
allowed, each until its import says ``taskqueue.wire.events``); delete this file then.
"""

from __future__ import annotations

from taskqueue.wire.events import (
    MAX_REASON,
    MAX_RESULT,
    MAX_TASK_TEXT,
    SEEN_IDS,
    RecentIds,
    cap_text,
    decode_events,
    encode,
    event_id,
    run_event,
    task_event,
)

__all__ = ["MAX_REASON", "MAX_RESULT", "MAX_TASK_TEXT", "SEEN_IDS", "RecentIds", "cap_text",
           "decode_events", "encode", "event_id", "run_event", "task_event"]
