"""A handler for the fail-fast tests (tests/test_halt.py), loaded by the worker with
--handler tests.halt_handlers:boom_or_hold."""


def boom_or_hold(text: str) -> str:
    """'boom' tasks fail at once; 'hold' tasks work for two minutes (longer than any test
    waits: only a cancel ends them early, so one that ends done says the cancel did not come);
    anything else is done at once."""
    if "boom" in text:
        raise ValueError(f"cannot handle {text!r}")
    if "hold" in text:
        import time

        time.sleep(120)
    return text.upper()
