"""What one emitter run did, counted as it goes: rows read, confirmed, rejected and published
again. The publisher (publisher.py) keeps it; the progress line and the summary read it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class PublishStats:
    """What a run did; ``queue_depth``/``consumers`` are read from the broker at the end."""

    read: int = 0
    confirmed: int = 0
    rejected: int = 0
    republished: int = 0
    republished_rows: tuple[int, int] | None = None  # lowest and highest row sent again
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    queue_depth: int | None = None
    consumers: int | None = None

    @property
    def seconds(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        return self.confirmed / self.seconds if self.seconds > 0 else 0.0

    def note_republished(self, rows: list[int]) -> None:
        self.republished += len(rows)
        low, high = min(rows), max(rows)
        if self.republished_rows:
            low, high = min(low, self.republished_rows[0]), max(high, self.republished_rows[1])
        self.republished_rows = (low, high)
