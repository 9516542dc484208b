"""Task handlers for tests, loaded by the worker with --handler tests.handlers:NAME."""


def fail_on_boom(text: str) -> None:
    """Succeeds at once, except for tasks containing 'boom'."""
    if "boom" in text:
        raise ValueError(f"cannot handle {text!r}")
