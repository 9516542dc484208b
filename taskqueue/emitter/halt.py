"""Fail fast: ``emitter_of_tasks.py --wait --halt-after N`` (or ``N%``) and
``Run.wait(halt_after=...)``.

While the outcomes of a run are awaited (results/waiting.py), ``Halt`` watches the count; once
the run has the limit's number of dead tasks it cancels the rest of the run, once, with the
command ``task_control.py cancel --run RUN`` gives (control/commands.py): the run's tasks still
queued, or waiting in ``.retry``, are acked unrun and recorded cancelled, the ones being worked
on are stopped and recorded cancelled. The waiting goes on until every task has its outcome
(the cancelled ones come in fast), so that the count and the results file are whole.

The limit is a number of dead tasks, or a percentage of the run's tasks (rounded up, at least
one). Dead tasks are counted from the run's start, but only while waiting: those of a run still
being published count once its publishing ends and the waiting begins.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.control import commands
from taskqueue.errors import UserError
from taskqueue.results.waiting import Outcomes

_COUNT = re.compile(r"[0-9]+")
_PERCENT = re.compile(r"([0-9]+(?:\.[0-9]+)?)%")


@dataclass(frozen=True)
class HaltAfter:
    """A run's limit of dead tasks: *count* of them, or *percent* of its tasks."""

    text: str  # as the user gave it: 2, 10%
    count: int = 0
    percent: Fraction | None = None

    @classmethod
    def parse(cls, text: str) -> HaltAfter:
        """``N`` (a whole number, 1 or more) or ``N%`` (above 0, at most 100); else
        ValueError saying what is wrong (without the option's name: the caller adds it)."""
        text = text.strip()
        percent = _PERCENT.fullmatch(text)
        if percent:
            value = Fraction(percent[1])
            if not 0 < value <= 100:
                raise ValueError(f"{text!r} must be a percentage above 0 and at most 100")
            return cls(text, percent=value)
        if _COUNT.fullmatch(text) and int(text) >= 1:
            return cls(text, count=int(text))
        raise ValueError(f"{text!r} must be a whole number of dead tasks of 1 or more, or a "
                         "percentage of the run's tasks such as 10%")

    @classmethod
    def of(cls, value: int | str | HaltAfter) -> HaltAfter:
        """The API's ``halt_after``: a whole number, or a text as on the command line."""
        if isinstance(value, HaltAfter):
            return value
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"halt_after={value!r} must be a whole number of dead tasks, or a "
                             "text such as '10%'")
        try:
            return cls.parse(str(value))
        except ValueError as exc:
            raise ValueError(f"halt_after: {exc}") from None

    def threshold(self, total: int) -> int:
        """How many dead tasks halt a run of *total* tasks."""
        if self.percent is None:
            return self.count
        return max(1, math.ceil(self.percent * total / 100))


class Halt:
    """A watch for ``OutcomeWaiter.wait``: at *limit*'s dead tasks, sets ``outcomes.halted``
    (why), says so, calls *cancel* once and says what it returns (the workers' answers)."""

    def __init__(self, limit: HaltAfter, run_id: str, expected: int, *,
                 cancel: Callable[[], str], say: Callable[[str], None],
                 label: str | None = None) -> None:
        self.run_id, self.at = run_id, limit.threshold(expected)
        self.cancel, self.say = cancel, say
        self.label = label or f"--halt-after {limit.text}"
        if limit.percent is not None:
            self.label += f": {self.at} of {expected}"

    def __call__(self, outcomes: Outcomes) -> None:
        if outcomes.halted or outcomes.complete or outcomes.dead < self.at:
            return  # halted already, nothing left to cancel, or not yet
        outcomes.halted = f"run {self.run_id} had {outcomes.dead} dead tasks ({self.label})"
        self.say(f"halting: {outcomes.halted}: cancelling the rest of it")
        self.say(self.cancel())


def run_canceller(settings: BrokerSettings, spec: QueueSpec, run_id: str,
                  log: logging.Logger) -> Callable[[], str]:
    """``task_control.py cancel --run RUN``, as a call that returns its summary line. If the
    command cannot be given, the UserError says that it was for the halt."""
    def cancel() -> str:
        try:
            outcome = commands.send(settings, spec, "cancel", run=run_id, say=log.warning)
        except UserError as exc:
            raise UserError(f"could not cancel the rest of run {run_id} to halt it: {exc}",
                            exc.exit_code) from None
        return commands.summary(outcome, f"cancelled run {run_id} on queue {spec.name!r}")
    return cancel
