"""The one exception a script turns into a single clear line on stderr and an exit code."""

from __future__ import annotations

EXIT_BAD_INPUT = 2  # bad options, URL, CSV: the user must change something they typed
EXIT_UNREACHABLE = 3  # no broker answered in time
EXIT_REFUSED = 4  # the broker answered and said no (login, vhost, permissions, queue args)
EXIT_INCOMPLETE = 5  # the run ended but some tasks were not confirmed / were rejected
EXIT_SOME_FAILED = 6  # --wait: every task has its outcome, and some are dead or cancelled


class UserError(Exception):
    """Something the user can fix. ``str(error)`` is the whole message: what is wrong and what
    to do. It never contains a password."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.exit_code = exit_code
