"""A delivery's life, top to bottom: receive -> already done? -> its turn (a rate limit) ->
run -> what becomes of it -> record, copy (the slot is free: it is set apart) -> confirm -> ack.

``DeliveryLife`` is the part of ``TaskConsumer`` (consumer.py) that carries one delivery
through: the record says whether it was done already (tail.py), it waits for its turn while
a rate limit is in force (rate_wait.py: in the slot, or parked), a slot runs it (slots.py,
work.py), the policy decides what becomes of it (policy.py, a pure decision), and its
``Settlement`` (settlement.py) records it, has it confirmed and acks it. Each step's failure is
handled where it happens: an odd message is dead-lettered with the reason, a settling that
raises puts the task back in the queue, a delivery whose channel went away is dropped (the
broker delivers it again).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import pika
from pika.channel import Channel
from pika.spec import Basic

from taskqueue.broker.config import QueueSpec
from taskqueue.control.listener import WorkerControl
from taskqueue.wire.record import task_key
from taskqueue.worker.account import WorkerAccount, WorkerOptions
from taskqueue.worker.delivery import Delivery, Overruns
from taskqueue.worker.idle import IdleWatch
from taskqueue.worker.in_hand import InHand
from taskqueue.worker.outbox import Outbox
from taskqueue.worker.phase import Phase
from taskqueue.worker.policy import (
    CONSUMER_TIMEOUT_REASON,
    Verdict,
    after_work,
    before_work,
    cancellation,
    dead_letter,
)
from taskqueue.worker.rate_wait import Gate, RateWaits
from taskqueue.worker.settlement import Settlement, Step
from taskqueue.worker.slots import WorkSlot
from taskqueue.worker.tail import ResultsTail
from taskqueue.worker.work import Outcome, failure_reason

CONSUMER_TIMEOUT_SECONDS = 1800  # RabbitMQ's default consumer_timeout (30 min)


@dataclass
class WorkerParts:
    """What a delivery's life needs of its worker, passed in (the consumer makes them)."""

    log: logging.Logger
    queue: QueueSpec
    options: WorkerOptions
    slots: list[WorkSlot]
    free_slots: list[WorkSlot]  # the consumer's stack of free slots (shared)
    outbox: Outbox
    account: WorkerAccount
    tail: ResultsTail
    idle: IdleWatch
    control: WorkerControl
    overruns: Overruns
    phase: Callable[[], Phase]  # the worker's phase now
    free: Callable[[WorkSlot, Delivery, float], None]  # the slot back on the stack, maybe stop
    changed: Callable[[], None]  # something a live view shows changed
    in_hand: InHand  # the tasks still ours, in their slots or set apart while confirming
    later: Callable[[Callable[[], None]], None]  # on the I/O loop's next turn (a timer due now)
    rate: Gate | None = None  # the rate limit's gate (worker/ratelimit.py), None: never limited


class DeliveryLife:
    """One delivery at a time per slot, top to bottom; the consumer calls ``on_message``
    (pika's consume callback), ``on_outcome`` (a slot's work ended) and ``taken_back``."""

    def __init__(self, parts: WorkerParts) -> None:
        self.parts = parts
        self.log, self.queue, self.options = parts.log, parts.queue, parts.options
        self.slots, self.outbox, self.account = parts.slots, parts.outbox, parts.account
        self.stats = parts.account.stats
        self.tail, self.idle, self.control = parts.tail, parts.idle, parts.control
        self.overruns = parts.overruns
        self._free_slots, self._free = parts.free_slots, parts.free
        self.waits = None if parts.rate is None else RateWaits(
            parts.rate, self.queue, self.log, parts.phase,
            lambda delivery: delivery.channel.connection.ioloop, self._turn_came, self._cancelled,
            lambda slot, delivery, verdict: self._carry_out(slot, delivery, verdict, 0.0),
            self.idle.retry_due, parts.changed)

    def on_message(self, channel: Channel, method: Basic.Deliver,
                   properties: pika.BasicProperties, body: bytes, urgent: bool = False) -> None:
        """*urgent*: ``Delivery.urgent``, as the intake decided it from the subscription the
        delivery came through (lanes.py), never from its headers."""
        delivery = Delivery(channel, method.delivery_tag, properties, body, method.redelivered,
                            urgent=urgent, subscription=method.consumer_tag)
        if self.parts.phase() is not Phase.CONSUMING or not self._free_slots:
            # Never from the consumer: one sent before our basic.cancel arrived (paused,
            # stopping) goes back through the intake (give_back.py ``GiveBack``: a copy where a nack
            # would count as a delivery), one that comes while every slot is busy waits there.
            # A slot is taken only while consuming, so one handed in all the same goes back.
            channel.basic_nack(delivery.tag, requeue=True)
            return
        slot = self._free_slots.pop()
        slot.delivery = delivery
        slot.settlement = Settlement(delivery, self.outbox, lambda s: self._on_over(slot, s),
                                     self._on_recorded)
        self.parts.changed()
        self.idle.busy()
        try:
            self._take(slot, delivery)
        except Exception as exc:  # one odd message must never take the connection down
            self.log.exception("[%s] cannot handle %s", slot.name, delivery.label)
            self._carry_out(slot, delivery, dead_letter(
                delivery, f"the worker could not handle this message: {failure_reason(exc)}",
                self.queue, slot.name), 0.0)

    def _take(self, slot: WorkSlot, delivery: Delivery) -> None:
        verdict = before_work(delivery, self.options, self.queue, slot.name,
                              self.control.state.cancelled_runs, self.overruns.count(delivery))
        if verdict is not None:
            self._carry_out(slot, delivery, verdict, 0.0)
            return
        if self.waits is not None and self.waits.hop(slot, delivery):
            return  # parked again at once: its turn is still far (rate_wait.py)
        # Only a delivery that may be a copy of a task done already reads the record
        # (delivery.py, tail.py): a first delivery of a first publish costs nothing more.
        exact = delivery.needs_check
        self.tail.check(task_key({"run_id": delivery.run_id,
                                  "message_id": delivery.properties.message_id}),
                        delivery.check_from if exact else None, exact,
                        lambda done: self._checked(slot, delivery, done))

    def _checked(self, slot: WorkSlot, delivery: Delivery, done: tuple[str, float] | None
                 ) -> None:
        """The record says whether the task was done already: if so, ack it unrun; else run
        it. (Called from the tail's reading too: a failure here puts the task back.)"""
        settlement = slot.settlement
        if slot.delivery is not delivery or settlement is None or not settlement.in_hand:
            return  # dropped while the record was read: the broker delivers it again
        try:
            self._start_or_skip(slot, delivery, settlement, done)
        except Exception:
            self._not_started(slot, delivery, settlement)

    def _not_started(self, slot: WorkSlot, delivery: Delivery, settlement: Settlement) -> None:
        self.log.exception("[%s] could not start %s; it goes back to the queue",
                           slot.name, delivery.label)
        settlement.work_ended()  # its work did not get going: nothing holds the slot
        settlement.requeue("the worker could not start it")

    def _start_or_skip(self, slot: WorkSlot, delivery: Delivery, settlement: Settlement,
                       done: tuple[str, float] | None) -> None:
        delivery.seen = self.tail.position
        if delivery.redelivered:
            self.stats.redelivered += 1
        if done is not None:
            worker, finished = done
            when = time.strftime("%H:%M:%S", time.localtime(finished)) if finished else "?"
            settlement.why = f"already done by {worker} at {when}; result kept"
            settlement.finish("skipped", 0.0)
            return
        if not self._cancelled(slot, delivery) and not (
                self.waits is not None and self.waits.begin(slot, delivery, settlement)):
            self._start(slot, delivery, settlement)

    def _turn_came(self, slot: WorkSlot, delivery: Delivery, settlement: Settlement) -> None:
        """Its turn under the rate limit came (rate_wait.py): start it, unless it was cancelled
        meanwhile. (A failure here puts the task back.)"""
        if slot.delivery is not delivery or not settlement.in_hand:
            return
        try:
            if not self._cancelled(slot, delivery):
                self._start(slot, delivery, settlement)
        except Exception:
            self._not_started(slot, delivery, settlement)

    def _cancelled(self, slot: WorkSlot, delivery: Delivery) -> bool:
        """Cancelled while its record was read (or while it waited for its turn): it never
        starts, it is recorded cancelled."""
        why = cancellation(delivery, self.control.state.cancelled_runs)
        if why is not None:
            self._carry_out(slot, delivery, Verdict("cancelled", why), 0.0)
        return why is not None

    def _start(self, slot: WorkSlot, delivery: Delivery, settlement: Settlement) -> None:
        note = f" (attempt {delivery.retries + 1})" if delivery.retries else ""
        if delivery.redelivered:
            note += " (redelivered: it may have run before)"
        self.log.info("[%s] received %s%s: %r", slot.name, delivery.label, note, delivery.text)
        expected = slot.runner.expected_seconds(delivery.text)
        if expected > CONSUMER_TIMEOUT_SECONDS and not (
                slot.runner.timeout and slot.runner.timeout < CONSUMER_TIMEOUT_SECONDS):
            self.log.warning("[%s] this task takes ~%.0f s, longer than RabbitMQ's default "
                             "consumer_timeout (1800 s): raise consumer_timeout in rabbitmq.conf "
                             "or the broker will close the channel and redeliver it",
                             slot.name, expected)
        settlement.work_started()
        slot.assign(delivery)

    def on_outcome(self, slot: WorkSlot, delivery: Delivery, outcome: Outcome) -> None:
        """On the I/O thread: the slot's work for *delivery* ended."""
        seconds = time.time() - delivery.started
        settlement = slot.settlement
        if slot.delivery is not delivery or settlement is None:
            return
        settlement.work_ended()
        if not settlement.in_hand:  # requeued (2nd Ctrl+C) or dropped: the broker has it back
            self._free(slot, delivery, seconds)
            return
        try:
            verdict = after_work(delivery, outcome, self.options, self.queue, slot.name,
                                 delivery.cancelled)
            self._carry_out(slot, delivery, verdict, seconds, outcome.result, ran=True)
        except Exception:
            self.log.exception("[%s] could not settle %s; it goes back to the queue",
                               slot.name, delivery.label)
            settlement.requeue("the worker could not settle it")

    def _carry_out(self, slot: WorkSlot, delivery: Delivery, verdict: Verdict,
                   seconds: float, result: str | None = None, ran: bool = False) -> None:
        """The verdict's record (and copy), confirmed before the ack (settlement.py)."""
        outcome = {"retry": "failed"}.get(verdict.outcome, verdict.outcome)
        if ran and outcome in ("failed", "dead"):
            slot.failed += 1
            self.stats.failed_attempts += 1
        if outcome == "failed":
            self.log.warning("[%s] failed %s (%s); retry %d/%d in %.1f s", slot.name,
                             delivery.label, verdict.reason, delivery.attempt,
                             self.options.max_retries, self.options.retry_delay)
        record = None if outcome == "parked" else self.account.record(  # parked: no attempt
            slot, delivery, outcome, seconds, verdict.reason, result)
        properties = None if verdict.copy_to is None else _copy_properties(
            delivery.properties, verdict.headers, verdict.expiration)
        settlement = slot.settlement
        if settlement is None:  # freed meanwhile (dropped): the broker delivers it again
            return
        settlement.reason, settlement.result = verdict.reason, result
        settlement.finish(verdict.outcome, seconds, record, verdict.copy_to, properties)
        if settlement.step is Step.CONFIRMING:
            self._set_apart(slot, settlement)

    def _set_apart(self, slot: WorkSlot, settlement: Settlement) -> None:
        """Its record (and copy) are on their way: the slot takes its next task while the
        broker confirms them (a task held in hand starts at once: one round trip less per
        task); the settlement acks by itself and is in hand (in_hand.py) until then. The
        broker still counts it against the prefetch: no more tasks come than before.
        On the loop's next turn: whatever called this (the work's outcome, a turn that came, a
        check) is done with this settlement before its slot holds another, and tasks in hand
        run one after another, not one inside the other's call."""
        self.parts.later(lambda: self._apart(slot, settlement))

    def _apart(self, slot: WorkSlot, settlement: Settlement) -> None:
        if slot.settlement is not settlement or settlement.step is not Step.CONFIRMING:
            return  # over meanwhile (acked, put back, dropped): its slot was freed then
        self.parts.in_hand.set_apart(slot, settlement)
        if self.waits is not None:
            self.waits.forget(slot)
        self._free(slot, settlement.delivery, settlement.seconds)

    def taken_back(self, how: str) -> bool:
        """At a consumer timeout (*how* the broker said it) the broker takes back the task this
        worker held longest: count it (``overruns``: RabbitMQ 4.3 and classic queues do not),
        record the attempt and say it. Its ack can no longer be given: the connection starts
        over, the task is stopped and comes again. False: nothing was in hand."""
        held = self.parts.in_hand.now()
        if not held:
            return False
        slot, settlement = min(held, key=lambda pair: pair[1].delivery.received)
        delivery = settlement.delivery
        seconds = time.time() - delivery.received
        if settlement.waiting_turn:
            # It never ran: no attempt to record, and holding it was not its doing.
            self.log.error("[%s] %s while %s waited %.0f s for its turn under the rate limit: a "
                           "consumer timeout; the broker took the task back (not counted, no "
                           "record). Subscribing again", slot.name, how, delivery.label, seconds)
            return True
        times = self.overruns.add(delivery)
        self.log.error("[%s] %s while %s was in hand for %.0f s: a consumer timeout (the "
                       "queue's consumer-timeout policy or x-consumer-timeout, else "
                       "consumer_timeout in rabbitmq.conf); the broker took the task back (%d "
                       "time(s); dead-lettered at %d, --delivery-limit). Subscribing again",
                       slot.name, how, delivery.label, seconds, times,
                       self.options.delivery_limit)
        slot.failed += 1
        self.stats.failed_attempts += 1
        self.outbox.record_result(self.account.record(
            slot, delivery, "failed", seconds, f"{CONSUMER_TIMEOUT_REASON} after {seconds:.0f} s"))
        return True

    def _on_recorded(self, record: dict) -> None:
        self.tail.note_done(record)

    def _on_over(self, slot: WorkSlot, settlement: Settlement) -> None:
        """Acked, requeued or dropped: count it, say it, free the slot (if it was set apart, the
        slot runs another task already: it leaves the tasks in hand)."""
        delivery, seconds = settlement.delivery, settlement.seconds
        in_slot = slot.settlement is settlement
        if self.waits is not None and in_slot:
            self.waits.forget(slot)
        if settlement.step is Step.REQUEUED and settlement.why.startswith("the broker refused"):
            self.log.warning("[%s] %s for %s; the task goes back to the queue", slot.name,
                             settlement.why, delivery.label)
        elif settlement.step is Step.ACKED:
            self._say_settled(slot, settlement)
        if in_slot:
            self._free(slot, delivery, seconds)
        else:
            self.parts.in_hand.apart_over(settlement)

    def _say_settled(self, slot: WorkSlot, settlement: Settlement) -> None:
        delivery, outcome, stats = settlement.delivery, settlement.outcome, self.stats
        if outcome == "done":
            stats.done += 1
            stats.done_by_run[delivery.run_id] += 1
            slot.done += 1
            result = settlement.result
            self.log.info("[%s] done %s in %.2f s: %r%s", slot.name, delivery.label,
                          settlement.seconds, delivery.text,
                          f" -> {result[:80]!r}" if result else "")
        elif outcome == "retry":
            self.idle.retry_due(self.options.retry_delay)  # from the moment the broker took it
        elif outcome == "parked":
            stats.parked += 1
        elif outcome == "dead":
            stats.dead_lettered += 1
            self.log.error("[%s] dead-lettered %s to %r: %s", slot.name, delivery.label,
                           self.queue.dead_name, settlement.reason)
        elif outcome == "cancelled":
            stats.cancelled += 1
            self.log.info("[%s] cancelled %s (%s): %r", slot.name, delivery.label,
                          settlement.reason, delivery.text)
        elif outcome == "skipped":
            stats.skipped += 1
            self.log.info("[%s] skipped %s (%r): %s", slot.name, delivery.label, delivery.text,
                          settlement.why)


def _copy_properties(original: pika.BasicProperties, headers: dict,
                     expiration: str | None = None) -> pika.BasicProperties:
    return pika.BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent, message_id=original.message_id,
        content_type=original.content_type, content_encoding=original.content_encoding,
        app_id=original.app_id, timestamp=original.timestamp, headers=headers,
        correlation_id=original.correlation_id, expiration=expiration)
