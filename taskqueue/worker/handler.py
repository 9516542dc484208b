"""A ``--handler``'s contract: ``MODULE:FUNCTION`` loaded from the worker's directory, called
with the task text; what it returns becomes the task's result, what it raises the task's
failure reason.

Shared by both sides of the isolation: ``InProcessHandler`` (work.py) calls the handler in the
worker, the child process (child.py) in a process of its own. Neither imports the other for
it, so the child never loads the worker's runners.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

from taskqueue.errors import UserError
from taskqueue.wire.events import MAX_RESULT, cap_text


def result_text(value: object) -> str | None:
    """A handler's return value as the text kept with its event (None stays None)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return cap_text(str(value), MAX_RESULT)


def failure_reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def load_handler(spec: str) -> Callable[[str], object]:
    """Import ``package.module:function``, a callable taking the task text."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UserError(f"--handler {spec!r} must be MODULE:FUNCTION, e.g. mytasks:resize")
    # From the directory the worker runs in, as the README promises: a console script's own
    # directory is first on sys.path, not the current one (spawned children inherit sys.path).
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        handler = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise UserError(f"cannot load --handler {spec!r} ({exc}); "
                        "give MODULE:FUNCTION, importable from here") from None
    except BaseException as exc:  # the module itself raised (or exited) while loading
        raise UserError(f"cannot load --handler {spec!r}: importing {module_name!r} raised "
                        f"{failure_reason(exc)}") from None
    if not callable(handler):
        raise UserError(f"--handler {spec!r} is not a function")
    return handler
