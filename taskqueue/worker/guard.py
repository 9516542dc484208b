"""Never raise into pika: a callback its I/O loop runs (a timer, a consumer, a channel's
callback) that raises would end the loop, and with it every delivery of the worker."""

from __future__ import annotations

import logging
from collections.abc import Callable


def guarded(log: logging.Logger, failed: str, callback: Callable[..., object],
            then: Callable[[], object] | None = None) -> Callable[..., None]:
    """*callback* made safe for the loop: what it raises is logged (*failed*: the line, with
    the traceback), then *then* is called (whatever undoes the half-done step); nothing is
    raised out of it, *then*'s own failure included."""
    def call(*args: object) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception(failed)
            if then is not None:
                try:
                    then()
                except Exception:
                    log.exception("%s; and so did what follows it", failed)
    return call
