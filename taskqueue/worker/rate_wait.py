"""A delivery's wait for its turn under a rate limit (issue 31 item 1; docs/design/rate-limit.md).

Filled in by the rate-limit build; for now only what the gate looks like to a delivery's life.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class Gate(Protocol):
    """What a delivery's life needs of the worker's rate gate (worker/ratelimit.py RateGate)."""

    def limit(self) -> Any: ...
    def ask(self, key: str, returner: bool, on_answer: Callable[[Any], None]
            ) -> Callable[[], None]: ...
    def on_change(self, callback: Callable[[Any], None]) -> None: ...
