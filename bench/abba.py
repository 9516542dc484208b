"""Side by side in one run, for bench/versus.py and bench/peers.py: every case is measured
``repeat`` times for each contender, the order alternating (A B, B A, A B, ...; with four,
ABCD, DCBA, ...), so that drift on a noisy machine hits all alike; the reports compare the
best of each."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar


class Contender(Protocol):
    """A tree or a system measured side by side; its runs' tasks/s, by case label."""

    name: str
    rates: dict[str, list[float]]
    log_rates: dict[str, list[float | None]]  # from its worker's log (None: the log says not)


class Batch(Protocol):
    """A case as the alternation sees it: *count* tasks of *dots* dots each."""

    label: str
    measure: str
    count: int
    dots: int


ContenderT = TypeVar("ContenderT", bound=Contender)
BatchT = TypeVar("BatchT", bound=Batch)


def write_tasks(path: Path, count: int, dots: int) -> Path:
    """One task a line: ``task K`` followed by *dots* dots (10 ms of sleep each, as run)."""
    path.write_text("".join(f"task {number}{'.' * dots}\n" for number in range(count)),
                    encoding="utf-8")
    return path


def alternate(contenders: Sequence[ContenderT], cases: Sequence[BatchT], repeat: int,
              scratch: Path,
              measure: Callable[[ContenderT, BatchT, Path], tuple[float, float | None]]
              ) -> None:
    """Fill each contender's ``rates`` and ``log_rates``, a line per run on stdout.
    ``measure(contender, case, tasks)`` runs one (*tasks*: the case's task file, the same
    for all) and gives (tasks/s, tasks/s from its log or None); a ``BenchError`` it raises
    ends the whole run."""
    width = max(len(contender.name) for contender in contenders) + 1
    for case in cases:
        tasks = write_tasks(scratch / f"{case.label}.csv", case.count, case.dots)
        for contender in contenders:
            contender.rates[case.label], contender.log_rates[case.label] = [], []
        for attempt in range(repeat):
            order = contenders if attempt % 2 == 0 else contenders[::-1]
            for contender in order:
                rate, logged = measure(contender, case, tasks)
                contender.rates[case.label].append(rate)
                contender.log_rates[case.label].append(logged)
                print(f"  {case.measure:<32} {contender.name:<{width}} run {attempt + 1}: "
                      f"{rate:8,.0f} tasks/s", flush=True)
