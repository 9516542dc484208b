"""The words a task message carries on the wire, shared by everyone who publishes or reads
one: its id (and the row inside it), and how it was published.

* ``message_id``: ``<file>:<row>:<hash>``, stable for a row of a file, so that a task published
  twice is recognised as one (``row_of`` reads the row back; other producers' ids have none).
* The ``type`` property says whether a copy of the task may already have been done:
  ``FIRST_PUBLISH`` for the emitter's first publish of a row; ``PUBLISHED_AGAIN`` for a row it
  sends again (after a lost connection, or in a ``--resume`` of the same run). A worker checks
  the results record only for deliveries that are not a first publish delivered for the first
  time (``worker/delivery.py``), so a task costs the same however many workers read.
* ``CHECK_FROM``: a header on retry and dead copies, the moment the attempt that failed was
  received: a done record of another copy of that task can only date from later (every copy
  taken before was checked, or was the first).
* Rate limit (docs/design/rate-limit.md): ``X_KEY`` names what a per-key limit counts (the
  emitter's ``--key-column``); a task parked until its turn carries ``RATE_LEFT`` (seconds
  still to wait once its tier's time is over: relative, so no two hosts' clocks are compared),
  ``RATE_PARKS`` (times parked) and ``PRIOR_DELIVERIES`` (the broker's count of deliveries
  without an ack before the park dropped ``x-delivery-count``, so a task that kills its worker
  still reaches ``--delivery-limit``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

FIRST_PUBLISH = "task"
PUBLISHED_AGAIN = "task-again"
CHECK_FROM = "x-check-from"
X_KEY = "x-key"
RATE_LEFT = "x-rate-left"
RATE_PARKS = "x-rate-parks"
PRIOR_DELIVERIES = "x-prior-deliveries"


def message_id(source: str, row: int, text: str, label: str | None = None) -> str:
    """A stable id: the same row of the same file always gets the same id, so a consumer can
    recognise a message published twice (after a connection loss) as one task. *label* is the
    short name shown in the id (default: the file name of *source*)."""
    digest = hashlib.sha1(f"{source}\0{row}\0{text}".encode()).hexdigest()[:12]
    return f"{label or Path(source).name}:{row}:{digest}"


def row_of(message_id: str | None) -> int | None:
    """The row number inside an id made by ``message_id`` (None for other producers' ids)."""
    parts = (message_id or "").rsplit(":", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None
