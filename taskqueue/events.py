"""Task events: one small JSON record per finished attempt, the raw material of the report.

Workers record an event when a task is done, fails, or is dead-lettered, and send them to
``<queue>.events`` in batches (one message holds a JSON list), so that the report costs the
task loop almost nothing. The report decodes them with ``decode_events``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

EVENT_BATCH = 200  # events per message at most
EVENT_FLUSH_SECONDS = 0.5  # and at least this often (the worker's I/O loop calls flush)


class EventBatch:
    """Collects events and hands them to *send* (bytes of a JSON list) in batches.

    ``flush()`` returns False when *send* could not take them (no channel right now); they are
    kept for the next flush."""

    def __init__(self, worker: str, host: str, send: Callable[[bytes], bool]) -> None:
        self.worker, self.host = worker, host
        self._send = send
        self._pending: list[dict] = []

    def record(self, *, run_id: str, message_id: str | None, row: int | None, task: str,
               outcome: str, received: float, started: float, seconds: float, attempt: int,
               redelivered: bool, reason: str = "") -> None:
        self._pending.append({
            "run_id": run_id, "worker": self.worker, "host": self.host,
            "message_id": message_id, "row": row, "task": task[:200], "outcome": outcome,
            "received": received, "started": started, "finished": time.time(),
            "seconds": round(seconds, 4), "attempt": attempt, "redelivered": redelivered,
            "reason": reason[:300]})
        if len(self._pending) >= EVENT_BATCH:
            self.flush()

    def flush(self) -> bool:
        if not self._pending:
            return True
        if not self._send(json.dumps(self._pending).encode()):
            return False
        self._pending = []
        return True


def decode_events(body: bytes) -> list[dict]:
    """The events in one message: a JSON list of them, or (older workers) a single one.
    Anything else is not ours and yields nothing."""
    try:
        decoded = json.loads(body)
    except ValueError:
        return []
    events = decoded if isinstance(decoded, list) else [decoded]
    return [event for event in events if isinstance(event, dict)]
