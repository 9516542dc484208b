"""Handlers for the benchmarks (loaded with --handler bench.work:NAME or directly)."""


def noop(text: str) -> None:
    """No work at all: what is left is the cost of running a handler."""

