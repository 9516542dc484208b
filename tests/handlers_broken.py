"""A handler module that cannot be loaded: importing it raises."""

raise RuntimeError("this module is broken on purpose")


def work(text: str) -> None:  # pragma: no cover - never reached
    pass
