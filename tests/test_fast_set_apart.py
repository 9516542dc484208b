"""A settlement set apart (worker/life.py ``_set_apart``, in_hand.py), without a broker: once a
task's record is on its way its slot is free for the next task, on the I/O loop's next turn; the
settlement acks by itself and stays in hand until then. The real broker's side:
tests/test_set_apart.py."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from types import SimpleNamespace

import pika

from taskqueue.broker.config import QueueSpec
from taskqueue.worker.account import WorkerOptions
from taskqueue.worker.delivery import Overruns
from taskqueue.worker.in_hand import InHand
from taskqueue.worker.life import DeliveryLife, WorkerParts
from taskqueue.worker.phase import Phase
from taskqueue.worker.settlement import Step
from taskqueue.worker.slots import WorkSlot
from taskqueue.worker.work import SimulatedWork
from tests.test_fast_settlement import Channel, Outbox

LOG = logging.getLogger("test")


class Worker:
    """One slot of zero-work tasks, a delivery life, and what the consumer would do."""

    def __init__(self) -> None:
        self.channel, self.outbox = Channel(), Outbox()
        self.later: list[Callable[[], None]] = []  # the I/O loop's next turn, run by hand
        self.freed: list[str] = []
        self.quiet = 0  # the consumer's _after_free, told by the tasks in hand
        self.slot = WorkSlot("w", SimulatedWork(0.0), self.outcome, lambda _call: None)
        self.free_slots = [self.slot]
        self.in_hand = InHand([self.slot], LOG, self.after_apart)
        stats = SimpleNamespace(done=0, done_by_run=Counter(), redelivered=0, failed_attempts=0)
        account = SimpleNamespace(stats=stats, record=lambda _slot, task, outcome, *_: {
            "row": task.row, "outcome": outcome})
        tail = SimpleNamespace(position=0, check=lambda _key, _from, _exact, done: done(None),
                               note_done=lambda _record: None)
        self.life = DeliveryLife(WorkerParts(
            LOG, QueueSpec("jobs"), WorkerOptions(name="w"), [self.slot], self.free_slots,
            self.outbox, account, tail, SimpleNamespace(busy=lambda: None),  # type: ignore[arg-type]
            SimpleNamespace(state=SimpleNamespace(cancelled_runs=())),  # type: ignore[arg-type]
            Overruns(), lambda: Phase.CONSUMING, self.free, lambda: None, self.in_hand,
            self.later.append))

    def outcome(self, slot, task, outcome) -> None:
        self.life.on_outcome(slot, task, outcome)

    def free(self, slot: WorkSlot, task, seconds: float) -> None:  # consumer.py's _free, short
        if slot.delivery is not task:
            return
        slot.release(seconds)
        slot.settlement = None
        self.free_slots.append(slot)
        self.freed.append(f"row {task.row}")

    def after_apart(self) -> None:
        self.quiet += 1

    def deliver(self, tag: int) -> None:
        method = SimpleNamespace(delivery_tag=tag, redelivered=False, consumer_tag="c")
        properties = pika.BasicProperties(message_id=f"t.csv:{tag}:ab", type="task")
        self.life.on_message(self.channel, method, properties, b"task")  # type: ignore[arg-type]

    def turn(self) -> None:
        calls, self.later[:] = list(self.later), []
        for call in calls:
            call()


def test_the_slot_takes_the_next_task_while_the_record_is_confirmed():
    worker = Worker()
    worker.deliver(1)
    (_record, confirm), = worker.outbox.records
    held = worker.slot.settlement
    assert held is not None and held.step is Step.CONFIRMING
    assert worker.freed == [] and worker.in_hand.apart == 0, "not inside the outcome's call"
    worker.turn()
    assert worker.freed == ["row 1"] and worker.slot.delivery is None
    assert worker.in_hand.apart == 1 and worker.in_hand.now() == [(worker.slot, held)]
    worker.deliver(2)  # the next task (one held in hand): it runs while row 1 is confirmed
    assert len(worker.outbox.records) == 2 and worker.channel.acked == []
    assert [pair[1].delivery.row for pair in worker.in_hand.now()] == [2, 1]
    confirm(True)
    assert worker.channel.acked == [1] and held.step is Step.ACKED
    assert worker.in_hand.apart == 0 and worker.quiet == 1, "it left the tasks in hand"
    assert worker.life.stats.done == 1 and worker.slot.done == 1
    assert worker.slot.settlement is not None and worker.slot.settlement.delivery.row == 2


def test_acked_before_the_next_turn_it_frees_its_slot_once_as_before():
    worker = Worker()
    worker.deliver(1)
    (_record, confirm), = worker.outbox.records
    confirm(True)
    assert worker.freed == ["row 1"] and worker.channel.acked == [1]
    worker.turn()
    assert worker.freed == ["row 1"] and worker.in_hand.apart == 0 and worker.quiet == 0


def test_a_second_stop_puts_back_the_one_set_apart_and_stops_only_its_slots_own_task():
    worker = Worker()
    interrupted: list[str] = []
    worker.slot.interrupt = lambda: interrupted.append("w")  # type: ignore[method-assign]
    worker.deliver(1)
    worker.turn()
    apart = worker.in_hand.now()
    worker.in_hand.requeue(apart, "a second stop request")
    assert worker.channel.nacked == [(1, True)] and interrupted == []
    assert worker.in_hand.apart == 0 and worker.quiet == 1


def test_a_lost_channel_drops_the_one_set_apart():
    worker = Worker()
    worker.deliver(1)
    worker.turn()
    worker.in_hand.drop()
    assert worker.in_hand.now() == [] and worker.in_hand.apart == 0 and worker.quiet == 1
    assert worker.channel.acked == [] and worker.channel.nacked == []
