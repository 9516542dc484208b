"""A worker holds its next task while its tasks are short (issue 29, item 5).

With a prefetch of one task per slot (the tutorial's fair dispatch) every task waits on the
broker: its slot frees once its record is on its way (life.py sets the settlement apart), but
the next task comes only after the ack. While tasks take milliseconds that wait is a large part
of each one. So a worker whose last task ran (its work, not a skip, a cancel or a park) shorter
than ``SHORT_SECONDS`` subscribes to its queue a second time, prefetch 1 (the intake's
``subscribe_second``): the next task is already in hand when a slot frees.

Holding a task is unfair only while another worker has nothing to do. The second subscription
has consumer priority -1: the broker sends it a task only while every first subscription (of
every worker, priority 0) is full, so an idle worker is served first. And while the queue has
tasks ready no worker is idle (each would be taking one), so a held task costs nobody anything.
Once the task in hand (with several slots: the youngest, whose slot may free first) has been
there ``SHORT_SECONDS`` (working, waiting for its turn under a rate limit, or for its check, but
not for its record's confirm; seen on the worker's beat, and
not while an alarm blocks publishing: a give-back then would be a counted nack) the worker asks
the queue's depth (a passive declare, every ``ASK_EVERY`` seconds at most, only while it holds
one): at 0 ready (or no answer), the subscription whose task waits is cancelled and the task
given back unstarted (``hold_one_less``: give_back.py, as a pause gives back), said in one line.
So is a task held ``NORMAL_HELD_AT_MOST`` seconds, ready ones or not: the broker's consumer
timeout counts from the delivery, not from the start. The worker is then back to one
subscription until a short task again (one slot: if the one cancelled was the first, a first
one is made again once the slot is free, ``restore_first``: the worker is not left served only
after every other one; the low one stays, and is let go like any second one when it next holds a
task behind a long one).

A worker of long tasks from the start never subscribes twice; one of short tasks in a deep queue
never gives back. A give-back costs what a pause's does: a copy or a nack, and a check when the
task comes again (from its first publish: a copy the emitter published again may have been done
by then).

Several slots hold one task more, the same way, but their first subscription is never the one
let go (lanes.py ``hold_one_less``): it counts the tasks running in the other slots, and a new
one could not (a prefetch applies to the consumers made after it, from zero). The task given
back may have come through it; its place there is then free, and the broker serves the
consumers waiting for a task in turn: an idle worker's, waiting already, before ours. Only with
no worker idle can it come back to us, and then holding it costs nobody. The low one let go
may still have its task running in a slot, which the broker then counts against no subscription
of ours: no low one is made again before that task is over (lanes.py ``may_hold_more``), so a
worker never holds more than slots + 1 normal tasks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from pika.channel import Channel

from taskqueue.worker.lanes import NORMAL_HELD_AT_MOST

SHORT_SECONDS = 0.05  # a task that ran less than this: the next one is worth having in hand
ASK_EVERY = 2.0  # seconds between two asks for the queue's depth while a long task runs
Inspect = Callable[[str, Callable[[int | None, int | None], None]], None]  # (depth, consumers)


class Subscriptions(Protocol):  # lanes.py's Intake
    queue: str

    @property
    def normal_subscriptions(self) -> int: ...
    @property
    def only_low(self) -> bool: ...
    def holds_normal(self) -> bool: ...
    def normal_held_for(self) -> float: ...
    def subscribe_second(self, channel: Channel) -> None: ...
    def restore_first(self, channel: Channel) -> None: ...
    def hold_one_less(self, channel: Channel) -> bool: ...
    def may_hold_more(self, in_hand: set[str]) -> bool: ...


class LookAhead:
    """When to hold a second task, when to let it go; the intake does both."""

    def __init__(self, intake: Subscriptions, inspect: Inspect,
                 in_hand_for: Callable[[], float | None],
                 clock: Callable[[], float] = time.monotonic,
                 log: logging.Logger | None = None,
                 subscriptions_in_hand: Callable[[], set[str]] = set) -> None:
        self.intake, self._inspect, self._in_hand_for = intake, inspect, in_hand_for
        self._subscriptions_in_hand = subscriptions_in_hand
        self._clock, self._log = clock, log or logging.getLogger(__name__)
        self._asked_at: float | None = None  # the last ask for the depth (None: none yet)
        self.given_back = 0

    def after_task(self, ran: float | None, channel: Channel) -> None:
        """A slot is free (consuming); its task's work ran *ran* seconds (None: it never ran:
        skipped, cancelled, parked). If the task let go was the first subscription's, the one
        left is the second (priority -1): a first one again, now that the slot can take it."""
        if self.intake.only_low:
            self.intake.restore_first(channel)
        if (ran is not None and ran < SHORT_SECONDS and self.intake.normal_subscriptions == 1
                and self.intake.may_hold_more(self._subscriptions_in_hand())):
            self.intake.subscribe_second(channel)

    def check(self, channel: Channel) -> None:
        """On the beat, consuming: a task waits behind a long one; is anybody else idle?"""
        if not self._holding_behind_long():
            return
        if self.intake.normal_held_for() >= NORMAL_HELD_AT_MOST:
            self._let_go(channel)  # before the consumer timeout can take it, ready ones or not
            return
        now = self._clock()
        if self._asked_at is not None and now - self._asked_at < ASK_EVERY:
            return
        self._asked_at = now
        try:
            self._inspect(self.intake.queue,
                          lambda ready, _consumers: self._answered(ready, channel))
        except Exception as exc:  # e.g. no channel left to ask on: fairness first
            self._log.debug("asking the depth of %r failed: %r", self.intake.queue, exc)
            self._answered(None, channel)

    def _holding_behind_long(self) -> bool:
        in_hand_for = self._in_hand_for()
        return (self.intake.normal_subscriptions > 1 and in_hand_for is not None
                and in_hand_for >= SHORT_SECONDS and self.intake.holds_normal())

    def _answered(self, ready: int | None, channel: Channel) -> None:
        """None: unknown (the ask failed): given back too. Asked again first: the slot may
        have freed (and a new task come) while the broker answered."""
        if (ready is None or ready == 0) and self._holding_behind_long():
            self._let_go(channel)

    def _let_go(self, channel: Channel) -> None:
        if self.intake.hold_one_less(channel):
            self.given_back += 1
