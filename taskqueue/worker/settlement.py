"""The end of one delivery, in one place: record -> confirm -> ack.

A finished attempt becomes a results record; a retry or a dead letter also becomes a copy to
``<queue>.retry`` / ``.dead``. ``Settlement`` publishes them through the outbox and acks the
task only once the broker has confirmed every one of them, so a crash in between repeats a
record or a copy, never loses one. Each settlement has one state (``step``), and every
decision about the delivery reads it, whether its work runs included (no flag beside it):

    received -> running -> deciding -> confirming -> acked      record (and copy) on the broker
       +-> waiting_turn -> running   a rate limit: its turn is asked for and waited for
       |                                          -> journaled -> acked   an alarm: they are in
       |                                             the worker's journal, fsynced
       |                                          -> requeued   the broker refused one
       +-> no work (done already, cancelled, odd) -> confirming (or acked at once: no record)
       +-> (waiting_turn ->) parked: a copy to a tier, no record -> confirming -> acked

    in hand (received .. journaled) -> requeued   put back now (a second Ctrl+C, a stop that
                                                  cannot wait for a blocked broker)
                                    -> dropped    the channel went: the broker delivers it again
    running -> requeued_running / dropped_running -(its work ends)-> requeued / dropped

Received: the slot is its own while the record says whether it was done already; waiting_turn:
it waits in its slot for its turn under a rate limit (rate_wait.py); running: its
work runs in the slot; deciding: the work ended, the policy says what becomes of it;
confirming: it needs its slot no more (life.py sets it apart: the slot takes its next task while
the broker confirms). A task put back or dropped while its work runs is no longer ours but still
holds its slot: the slot takes the next task once the work has ended (``work_ended``).

Journaled: during a memory or disk alarm nothing can be confirmed; rather than hold the task
until the alarm ends (its slot is free, but the broker counts it against the prefetch: no next
task would come), what is still unconfirmed goes to the journal on disk (journal.py), the task
is acked and the broker sends the next one; the outbox publishes the
journal once the alarm is over. Only a block does this: a connection that is down keeps the
task in hand (the broker delivers it again if the connection is lost).

A task recognised as already done is acked at once (nothing to record: its record exists).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum

import pika

from taskqueue.worker.copies import Copy
from taskqueue.worker.delivery import Delivery
from taskqueue.worker.outbox import Outbox


class Step(Enum):
    RECEIVED = "received"  # in a slot; the record says whether it was done already
    WAITING_TURN = "waiting for its turn"  # a rate limit: asked for, or waiting for, its turn
    RUNNING = "running"  # its work runs in the slot
    DECIDING = "deciding"  # its work ended: the policy decides, the record is made
    CONFIRMING = "confirming"
    JOURNALED = "journaled"  # kept in the journal (an alarm): acked at once
    ACKED = "acked"
    REQUEUED = "requeued"
    DROPPED = "dropped"
    REQUEUED_RUNNING = "requeued, its work still running"  # the slot frees when it ends
    DROPPED_RUNNING = "dropped, its work still running"


IN_HAND = frozenset({Step.RECEIVED, Step.WAITING_TURN, Step.RUNNING, Step.DECIDING, Step.CONFIRMING,
                     Step.JOURNALED})
WORK_RUNS = frozenset({Step.RUNNING, Step.REQUEUED_RUNNING, Step.DROPPED_RUNNING})
BEFORE_WORK_ENDS = frozenset({Step.RECEIVED, Step.WAITING_TURN, Step.RUNNING})  # in hand
# Over while the work runs, and what that becomes once the work has ended.
_WHILE_RUNNING = {Step.REQUEUED: Step.REQUEUED_RUNNING, Step.DROPPED: Step.DROPPED_RUNNING}
_WORK_ENDED = {Step.RUNNING: Step.DECIDING, Step.REQUEUED_RUNNING: Step.REQUEUED,
               Step.DROPPED_RUNNING: Step.DROPPED}


class Settlement:
    """Carry one delivery to its end; ``on_over(self)`` once it is acked, requeued or dropped
    (``outcome`` says what the attempt came to: done, retry, dead, cancelled, skipped; or
    parked: no attempt)."""

    def __init__(self, delivery: Delivery, outbox: Outbox,
                 on_over: Callable[[Settlement], None],
                 on_recorded: Callable[[dict], None] | None = None) -> None:
        self.delivery, self.outbox, self.on_over = delivery, outbox, on_over
        self.on_recorded = on_recorded  # a record of ours confirmed (the tail learns it)
        self.step = Step.RECEIVED
        self.outcome = ""
        self.seconds = 0.0
        self.why = ""  # why it was requeued (or skipped)
        self.reason = ""  # the verdict's reason (failed, dead, cancelled)
        self.result: str | None = None  # what the work returned
        self.copy: Copy | None = None
        self._record: dict | None = None  # the record until the broker confirms it
        self._copy_due = False  # the copy is not confirmed yet
        self.confirming_since: float | None = None  # monotonic: its record/copy sent (in_hand.py)

    @property
    def in_hand(self) -> bool:
        """Not acked, requeued or dropped yet: the task is still ours."""
        return self.step in IN_HAND

    @property
    def work_runs(self) -> bool:
        """Its work runs in the slot (in hand or not): the slot is not free before it ends."""
        return self.step in WORK_RUNS

    @property
    def waiting_turn(self) -> bool:
        """It waits for its turn (never ran): what ends a wait acts only then (rate_wait.py),
        and a consumer timeout records no attempt for it (life.py ``taken_back``)."""
        return self.step is Step.WAITING_TURN

    def wait_turn(self) -> None:
        """A rate limit is in force: its turn is asked for before its work starts."""
        if self.step is Step.RECEIVED:
            self.step = Step.WAITING_TURN

    def work_started(self) -> None:
        """The slot runs its work now (the record said it was not done already, and its turn
        came)."""
        if self.step in (Step.RECEIVED, Step.WAITING_TURN):
            self.step = Step.RUNNING

    def work_ended(self) -> None:
        """The slot's work for it ended (or never started): in hand, the policy decides next;
        put back or dropped meanwhile, it is over now."""
        self.step = _WORK_ENDED.get(self.step, self.step)

    def finish(self, outcome: str, seconds: float, record: dict | None = None,
               copy_to: str | None = None, properties: pika.BasicProperties | None = None
               ) -> None:
        """Record (and copy), then ack once the broker has confirmed them all."""
        if not self.in_hand:
            return
        self.outcome, self.seconds = outcome, seconds
        if not self.delivery.channel.is_open:
            self._over(Step.DROPPED)
            return
        self.step, self.confirming_since = Step.CONFIRMING, time.monotonic()
        self._record, self._copy_due = record, copy_to is not None
        if copy_to is not None:
            self.copy = Copy(copy_to, self.delivery.body, properties, self._confirmed)
        if self.outbox.blocked and self._journal():
            return
        if record is not None:
            self.outbox.record_result(record, lambda ok: self._confirmed(ok, record))
        if self.copy is not None:
            self.outbox.publish_copy(self.copy)
        if self._record is None and not self._copy_due:
            self._ack()
        else:
            self.outbox.when_blocked(self._journal)  # an alarm while the confirms are due

    def _confirmed(self, ok: bool, record: dict | None = None) -> None:
        if record is not None and ok and self.on_recorded is not None:
            self.on_recorded(record)  # true whatever became of the delivery meanwhile
        if self.step is not Step.CONFIRMING:
            return
        if not ok:
            self.requeue("the broker refused its record or copy")
            return
        if record is not None:
            self._record = None
        else:
            self._copy_due = False
        if self._record is None and not self._copy_due:
            self._ack()

    def _journal(self) -> bool:
        """The broker blocks publishing: keep what it has not confirmed in the journal, then
        ack. False if the outbox could not (the copy is on its way already, or the journal
        cannot be written): the confirms are waited for, as without a journal."""
        if self.step is not Step.CONFIRMING or not self.delivery.channel.is_open:
            return False  # (a closed channel: the delivery is dropped, the broker has it back)
        copy = self.copy if self._copy_due else None
        if not self.outbox.keep(self._record, copy):
            return False
        if self._record is not None and self.on_recorded is not None:
            self.on_recorded(self._record)  # it will be in the stream: the tail may know it
        self.step = Step.JOURNALED
        self._ack()
        return True

    def _ack(self) -> None:
        channel = self.delivery.channel
        if not channel.is_open:
            self._over(Step.DROPPED)
            return
        # Out at once (broker/frames.py, EagerWriteConnection): with prefetch = slots, the
        # next task waits for this ack.
        channel.basic_ack(self.delivery.tag)
        self._over(Step.ACKED)

    def requeue(self, why: str) -> bool:
        """Put the task back in the queue now (a second Ctrl+C, a refused copy, a stop that
        cannot wait for a blocked broker); True if it was still ours to put back."""
        if not self.in_hand:
            return False
        self.why = why
        if self.copy is not None:
            self.copy.cancelled = True
        if self.delivery.channel.is_open:
            self.delivery.channel.basic_nack(self.delivery.tag, requeue=True)
            self._over(Step.REQUEUED)
        else:
            self._over(Step.DROPPED)
        return True

    def drop(self) -> None:
        """Its channel is gone: the broker has the task back. A record already given to the
        outbox still goes out (it says what happened); a copy does not."""
        if not self.in_hand:
            return
        if self.copy is not None:
            self.copy.cancelled = True
        self._over(Step.DROPPED)

    def _over(self, step: Step) -> None:
        self.outbox.forget(self._journal)
        self.step = _WHILE_RUNNING.get(step, step) if self.step is Step.RUNNING else step
        self.delivery.settled = True
        self.on_over(self)
