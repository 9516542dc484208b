"""The tasks in hand (settlement.py: still ours, not yet acked, put back or dropped), each in
its slot or, once its record is on its way, set apart (its slot takes the next task while the
broker confirms: issue 29, item 5), and what the worker does to all of them at once: put them
back (a second stop request), give back the ones the broker has not confirmed (a stop that
cannot wait for an alarm; with them the deliveries given back unstarted whose copies it has not
confirmed), drop them (the connection is lost), stop the ones cancelled (task_control.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection

from taskqueue.worker.give_back import GiveBack
from taskqueue.worker.policy import cancellation
from taskqueue.worker.settlement import BEFORE_WORK_ENDS, Settlement, Step
from taskqueue.worker.slots import WorkSlot

EXIT_GRACE_SECONDS = 5.0  # at exit, wait this long for the last records to be confirmed


class InHand:
    """The consumer's slots seen for the tasks still ours in them, and the tasks set apart."""

    def __init__(self, slots: list[WorkSlot], log: logging.Logger,
                 after_apart: Callable[[], None] = lambda: None) -> None:
        self.slots, self.log = slots, log  # the consumer's list (filled once its life exists)
        # Settlements confirming whose slot was freed, with the slot they ran in; over, each
        # leaves through ``apart_over``, which tells *after_apart* (the worker may be quiet).
        self._apart: list[tuple[WorkSlot, Settlement]] = []
        self._after_apart = after_apart

    def now(self) -> list[tuple[WorkSlot, Settlement]]:
        """The tasks still ours, each with the slot it is (or was) in and its settlement: in a
        slot (working on it, or waiting for its turn or its check), or set apart (waiting for
        its confirms)."""
        return [(slot, slot.settlement) for slot in self.slots
                if slot.settlement is not None and slot.settlement.in_hand] + [
                    (slot, held) for slot, held in self._apart if held.in_hand]

    def set_apart(self, slot: WorkSlot, settlement: Settlement) -> None:
        """Its record (or copy) is on its way: the broker's confirm, then the ack, no longer
        need the slot (the settlement acks by itself); it stays in hand until then."""
        self._apart.append((slot, settlement))

    def apart_over(self, settlement: Settlement) -> None:
        """A settlement set apart is acked, put back or dropped."""
        self._apart = [(slot, held) for slot, held in self._apart if held is not settlement]
        self._after_apart()

    @property
    def apart(self) -> int:
        """Tasks set apart, still waiting for their confirms: still in hand (a stop waits for
        them, a resume subscribes after them: the broker counts them until their ack)."""
        return len(self._apart)

    def in_hand_for(self) -> float | None:
        """Seconds the youngest task in a slot whose work has not ended has been ours (None:
        none): working, or waiting for its turn or its check; with several slots, the soonest
        one may free for a task held behind them (look_ahead.py). One waiting for its record's
        confirm does not count: that wait is the broker's, as short as the work was."""
        received = [held.delivery.received for _slot, held in self.now()
                    if held.step in BEFORE_WORK_ENDS]
        return time.time() - max(received) if received else None

    def subscriptions(self) -> set[str]:
        """The consumer tags the tasks in hand came through."""
        return {held.delivery.subscription for _slot, held in self.now()}

    def requeue(self, held: list[tuple[WorkSlot, Settlement]], why: str) -> None:
        """A second stop request: *held* (what was in hand when it came) back to the queue
        now, and their work stopped."""
        for slot, settlement in held:
            delivery = settlement.delivery
            if settlement.requeue(why):
                self.log.warning("[%s] requeued %s: %r", slot.name, delivery.label,
                                 delivery.text)
            if slot.settlement is settlement:  # (one set apart: its slot runs another task)
                slot.interrupt()

    def give_back_if_stuck(self, stopping: bool, now: float,
                           giving_back: GiveBack | None) -> None:
        """A stop never waits for an alarm (or any confirm that does not come) to end: a task
        whose record or copy the broker has not confirmed ``EXIT_GRACE_SECONDS`` after it was
        sent goes back now. A drain that is only long keeps waiting for the confirms it gets in
        milliseconds (a nack then would run the task again)."""
        if stopping:
            self.give_back_unconfirmed(giving_back, sent_before=now - EXIT_GRACE_SECONDS)

    def give_back_unconfirmed(self, giving_back: GiveBack | None = None,
                              sent_before: float | None = None) -> None:
        """Stopping, and the broker has not taken their record or copy (sent before
        *sent_before*, monotonic; None: whenever): they no longer hold the worker, they go back
        to the queue instead (their next attempt is at-least-once). So do the deliveries given
        back unstarted (*giving_back*: lanes.py) whose copies it has not confirmed: each
        original with a nack, all in one line, instead of staying unacked until the
        connection closes."""
        for slot, held in self.now():
            label = held.delivery.label
            if held.step is Step.CONFIRMING and sent_long_ago(held, sent_before) and held.requeue(
                    "the broker has not confirmed its record or copy (blocked?)"):
                self.log.warning("[%s] the broker has not taken the record or copy of %s "
                                 "(blocked?): stopping, the task goes back to the queue "
                                 "instead", slot.name, label)
        if giving_back is not None:
            giving_back.unconfirmed_back(lambda held: sent_long_ago(held, sent_before))

    def drop(self) -> None:
        """The connection is lost: nobody can ack them now, the broker delivers them again;
        the work running is stopped."""
        for slot, held in self.now():
            working = held.step is Step.RUNNING
            held.drop()
            if working:
                self.log.warning("[%s] connection lost while working on %s: stopped it; the "
                                 "broker delivers it again (at-least-once)", slot.name,
                                 held.delivery.label)
                slot.interrupt()

    def stop_cancelled(self, cancelled: Collection[str]) -> int:
        """The running tasks that are cancelled now (*cancelled*: the control state's
        ``Cancellations``) are stopped for real, their program and its children ended, to be
        recorded cancelled with the reason; how many."""
        stopped = 0
        for slot, held in self.now():
            why = cancellation(held.delivery, cancelled)
            if why is not None and held.step is Step.RUNNING:
                held.delivery.cancelled = why
                slot.interrupt()
                stopped += 1
        return stopped


def sent_long_ago(settlement: Settlement, sent_before: float | None) -> bool:
    """Its record or copy was sent before *sent_before* (None: any time)."""
    return sent_before is None or (settlement.confirming_since or 0.0) <= sent_before
