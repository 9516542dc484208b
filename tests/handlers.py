"""Task handlers for tests, loaded by the worker with --handler tests.handlers:NAME."""


def fail_on_boom(text: str) -> None:
    """Succeeds at once, except for tasks containing 'boom'."""
    if "boom" in text:
        raise ValueError(f"cannot handle {text!r}")


def die_on_poison(text: str) -> None:
    """Kills the whole worker process (as a segfaulting library would) for 'poison' tasks."""
    if "poison" in text:
        import os

        os._exit(70)


def exit_on_call(text: str) -> None:
    """Calls sys.exit() (SystemExit is not an Exception) for tasks containing 'exit'."""
    if "exit" in text:
        import sys

        sys.exit(3)
