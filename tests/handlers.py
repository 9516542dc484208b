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


def sleep_forever(text: str) -> None:
    """A stuck network call: never returns for tasks containing 'hang'."""
    if "hang" in text:
        import time

        while True:
            time.sleep(60)


def kill_self_on_poison(text: str) -> None:
    """SIGKILLs the process it runs in (a segfault, the OOM killer) for 'poison' tasks."""
    if "poison" in text:
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def shout(text: str) -> str:
    """Returns a result: the text in capitals."""
    return text.upper()


def slow_quarter(text: str) -> str:
    """A quarter of a second of real work per task (sleep stands in for it)."""
    import time

    time.sleep(0.25)
    return f"did {text}"


def one_second(text: str) -> str:
    """A second of work."""
    import time

    time.sleep(1)
    return f"finished {text}"


def counted(text: str) -> str:
    """Notes every run of a task in the file $RUNS_FILE (one line per start: the test counts
    how often each task ran), works 20 ms, returns a result."""
    import os
    import time

    with open(os.environ["RUNS_FILE"], "a", encoding="utf-8") as runs:
        runs.write(f"{time.time():.6f} {text}\n")
    time.sleep(0.02)
    return f"result of {text}"


def gated(text: str) -> str:
    """Notes its start in $RUNS_FILE (as ``counted``), then works until the file $GATE_FILE
    exists (60 s at most): the test decides when it ends. Returns a result."""
    import os
    import time

    with open(os.environ["RUNS_FILE"], "a", encoding="utf-8") as runs:
        runs.write(f"{time.time():.6f} {text}\n")
    deadline = time.monotonic() + 60
    while not os.path.exists(os.environ["GATE_FILE"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return f"result of {text}"


def big_result(text: str) -> str:
    """A result of 40 KB: more than a record keeps."""
    return "x" * 40_000


def dots_fail_on_boom(text: str) -> str:
    """Sleeps 0.1 s per '.', as the demo does; fails for tasks containing 'boom'."""
    import time

    time.sleep(0.1 * text.count("."))
    if "boom" in text:
        raise ValueError(f"cannot handle {text!r}")
    return text.upper()
