"""Events: small JSON records, the raw material of the report and of the live view.

Kinds (field ``kind``; events of older workers have none and are task events):
  ``task``      one finished attempt (done, failed, dead) of one task by one worker slot;
  ``run``       an emitter run started (with its row count when known) or finished (with how
                many tasks it published);
  ``worker``    a worker stopped, with its totals and how many events it had to drop;
  ``snapshot``  what a worker's slots are doing right now (live views only, never stored).
Since 0.4 task, run and worker records go to the results stream (wire/record.py, the same
JSON lists); the ``<queue>.events`` exchange carries the live views' snapshots and answers.
Workers before 0.4 sent them in batches to the durable ``<queue>.events`` queue, which the
report still reads. Every stored event carries an ``id``, so one sent twice counts once.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections import deque

MAX_TASK_TEXT = 200
MAX_REASON = 2000  # bytes of a failure reason
MAX_RESULT = 16 * 1024  # bytes of a handler's result (or a command's output) kept in its record

_ids = itertools.count(1)
_PROCESS = f"{os.getpid():x}{int(time.time() * 1000) % 0xFFFFFF:06x}"


def event_id() -> str:
    """Unique per event: this process, and a counter."""
    return f"{_PROCESS}-{next(_ids)}"


def cap_text(text: str, limit: int) -> str:
    """*text* cut to at most *limit* UTF-8 bytes (never in the middle of a character)."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore") + "…"


def task_event(*, run_id: str, worker: str, host: str, message_id: str | None, row: int | None,
               task: str, outcome: str, received: float, started: float, seconds: float,
               attempt: int, redelivered: bool, reason: str = "",
               result: str | None = None, queued: float | None = None) -> dict:
    return {"kind": "task", "id": event_id(), "run_id": run_id, "worker": worker, "host": host,
            "message_id": message_id, "row": row, "task": cap_text(task, MAX_TASK_TEXT),
            "outcome": outcome, "queued": queued, "received": received, "started": started,
            "finished": time.time(), "seconds": round(seconds, 4), "attempt": attempt,
            "redelivered": redelivered, "reason": cap_text(reason, MAX_REASON),
            "result": None if result is None else cap_text(result, MAX_RESULT),
            "cut": (result is not None and len(result.encode("utf-8")) > MAX_RESULT)
            or len(reason.encode("utf-8")) > MAX_REASON}


def run_event(run_id: str, queue: str, state: str, total: int | None, published: int) -> dict:
    return {"kind": "run", "id": event_id(), "run_id": run_id, "queue": queue, "state": state,
            "total": total, "published": published, "time": time.time()}


def kind_of(event: dict) -> str:
    return event.get("kind") or "task"  # events of older workers have no kind


def encode(events: list[dict]) -> bytes:
    return json.dumps(events, ensure_ascii=False).encode("utf-8")


def decode_events(body: bytes) -> list[dict]:
    """The events in one message: a JSON list of them, or (older workers) a single one.
    Anything else is not ours and yields nothing. Text is text: bytes that are not UTF-8 and
    JSON's escapes of lone surrogates (``\\ud800``, which no UTF-8 can carry: a page, a copy or
    a picture would fail on it) become U+FFFD, as a decoder makes of bad bytes."""
    text = body.decode("utf-8", "replace")
    try:
        decoded = json.loads(text)
    except ValueError:
        return []
    if "\\ud" in text or "\\uD" in text:  # rare: only then look for a lone one
        decoded = _text_only(decoded)
    events = decoded if isinstance(decoded, list) else [decoded]
    return [event for event in events if isinstance(event, dict)]


_SURROGATE = re.compile("[\ud800-\udfff]")


def _text_only(value: object) -> object:
    """*value* (decoded JSON) with every lone surrogate replaced by U+FFFD."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_text_only(item) for item in value]
    if isinstance(value, dict):
        return {_text_only(key): _text_only(item) for key, item in value.items()}
    return value


SEEN_IDS = 50_000  # event ids remembered to drop a resent copy (resends come soon after)


class RecentIds:
    """Membership of the last *size* ids added: memory stays bounded however long the view
    runs. A duplicate is a batch sent again after a reconnect, so it arrives soon after the
    original, well inside the window."""

    def __init__(self, size: int = SEEN_IDS) -> None:
        self._order: deque = deque()
        self._ids: set = set()
        self._size = size

    def __contains__(self, item: object) -> bool:
        return item in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, item: object) -> None:
        if item in self._ids:
            return
        self._ids.add(item)
        self._order.append(item)
        if len(self._order) > self._size:
            self._ids.discard(self._order.popleft())

    def clear(self) -> None:
        self._order.clear()
        self._ids.clear()
