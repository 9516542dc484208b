"""A worker's second subscription (worker/look_ahead.py; lanes.py ``Intake``), without a
broker; the fakes are tests/test_fast_give_back.py's. The real broker's side:
tests/test_look_ahead.py."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import pytest

from taskqueue.worker.give_back import Held
from taskqueue.worker.in_hand import InHand
from taskqueue.worker.lanes import NORMAL_HELD_AT_MOST, Lanes
from taskqueue.worker.look_ahead import SHORT_SECONDS, LookAhead
from taskqueue.worker.settlement import Step
from tests.test_fast_give_back import Channel, intake, properties


class Intake:
    """What LookAhead reads of lanes.py's Intake, and what it asks of it."""

    queue = "jobs"
    only_low = False

    def __init__(self, subscriptions: int = 1, holds: bool = False, held_for: float = 1.0) -> None:
        self.normal_subscriptions, self.holds, self.held_for = subscriptions, holds, held_for
        self.asked: list[str] = []

    def holds_normal(self) -> bool:
        return self.holds

    def normal_held_for(self) -> float:
        return self.held_for

    def subscribe_second(self, _channel) -> None:
        self.asked.append("second")
        self.normal_subscriptions = 2

    def restore_first(self, _channel) -> None:
        self.asked.append("first again")
        self.only_low = False

    def may_hold_more(self, _in_hand) -> bool:
        return True

    def hold_one_less(self, _channel) -> bool:
        self.asked.append("one less")
        self.normal_subscriptions, self.holds = 1, False
        return True


def nothing(*_args) -> None:
    return None


@pytest.mark.parametrize("ran, subscriptions, wanted", [
    (0.0, 1, True),               # zero work: hold the next one (any number of slots)
    (SHORT_SECONDS - 0.001, 1, True),
    (SHORT_SECONDS, 1, False),    # long enough that the broker's wait does not matter
    (None, 1, False),             # it never ran (skipped, cancelled, parked): says nothing
    (0.0, 2, False),              # holds one already
    (0.0, 0, False),              # not consuming
])
def test_a_second_subscription_after_a_short_task(ran, subscriptions, wanted):
    intake = Intake(subscriptions)
    LookAhead(intake, nothing, lambda: None).after_task(ran, None)  # type: ignore[arg-type]
    assert (intake.asked == ["second"]) is wanted


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def looking(in_hand_for: float | None = 5.0, subscriptions: int = 2, holds: bool = True,
            held_for: float = 1.0):
    intake, asks, clock = Intake(subscriptions, holds, held_for), [], Clock()
    state = {"in_hand_for": in_hand_for}
    ahead = LookAhead(intake, lambda queue, answer: asks.append((queue, answer)),  # type: ignore[arg-type]
                      lambda: state["in_hand_for"], clock)
    return ahead, intake, asks, clock, state


@pytest.mark.parametrize("in_hand_for, subscriptions, holds", [
    (SHORT_SECONDS - 0.001, 2, True),    # still short: the held one starts in a moment
    (None, 2, True),                     # nothing in hand: the held one starts next anyway
    (10.0, 1, True),                     # one subscription: nothing extra in hand
    (10.0, 2, False),                    # the second's task is running, none waits
])
def test_no_ask_while_holding_costs_nobody(in_hand_for, subscriptions, holds):
    ahead, intake, asks, _clock, _state = looking(in_hand_for, subscriptions, holds)
    ahead.check(None)  # type: ignore[arg-type]
    assert asks == [] and intake.asked == []


@pytest.mark.parametrize("ready, let_go", [(0, True), (None, True), (1, False), (500, False)])
def test_a_long_task_with_one_waiting_asks_the_depth_and_lets_go_only_if_none_is_ready(
        ready, let_go):
    """Tasks ready: nobody is idle (they would take them); none: somebody may be, it goes back;
    unknown (the ask failed): back too. In hand counts from the slot's taking it: working, or
    waiting for a rate limit's turn or a check."""
    ahead, intake, asks, _clock, _state = looking(SHORT_SECONDS)
    ahead.check(None)  # type: ignore[arg-type]
    assert [queue for queue, _answer in asks] == ["jobs"]
    asks[0][1](ready, 3)
    assert (intake.asked == ["one less"]) is let_go and ahead.given_back == int(let_go)


def test_an_answer_that_comes_after_the_slot_freed_changes_nothing():
    ahead, intake, asks, _clock, state = looking()
    ahead.check(None)  # type: ignore[arg-type]
    state["in_hand_for"] = 0.001  # meanwhile: the long one ended, the held one started
    asks[0][1](0, 3)
    assert intake.asked == []


def test_an_ask_that_cannot_be_made_lets_go():
    intake = Intake(2, True)

    def broken(_queue, _answer) -> None:
        raise RuntimeError("no free channels")

    ahead = LookAhead(intake, broken, lambda: 5.0)  # type: ignore[arg-type]
    ahead.check(None)  # type: ignore[arg-type]
    assert intake.asked == ["one less"]


def test_held_past_the_bound_goes_back_even_with_tasks_ready():
    """The consumer timeout counts from the delivery: a task held behind a long one in a deep
    queue would reach it during its own run."""
    ahead, intake, asks, _clock, _state = looking(held_for=NORMAL_HELD_AT_MOST)
    ahead.check(None)  # type: ignore[arg-type]
    assert asks == [] and intake.asked == ["one less"]


def test_the_depth_is_asked_at_most_every_few_seconds():
    ahead, _intake, asks, clock, _state = looking()
    for _ in range(10):  # beats while the long task runs, tasks still ready
        ahead.check(None)  # type: ignore[arg-type]
        clock.now += 0.25
        for _queue, answer in asks[-1:]:
            answer(7, 2)
    assert len(asks) == 2  # 2.5 s of beats: at 0 s and at 2 s (ASK_EVERY)


def test_only_the_low_one_left_a_first_one_is_made_again_at_the_free_slot():
    intake = Intake(1)
    intake.only_low = True
    LookAhead(intake, nothing, lambda: None).after_task(5.0, None)  # type: ignore[arg-type]
    assert intake.asked == ["first again"]


class CancellingChannel(Channel):
    def __init__(self) -> None:
        super().__init__()
        self.cancelled: list[str] = []
        self.waited: list[str] = []  # cancelled with a callback: pika forgets them at CancelOk
        self.priorities: list[int] = []

    def basic_consume(self, queue: str, on_message, arguments: dict | None = None) -> str:
        self.priorities.append((arguments or {}).get("x-priority", 0))
        return super().basic_consume(queue, on_message)

    def basic_cancel(self, tag: str, callback=None) -> None:
        self.cancelled.append(tag)
        if callback is not None:
            self.waited.append(tag)

    def deliver_to(self, tag: str, delivery_tag: int) -> None:
        """The broker sends the consumer *tag* a delivery; to a cancelled one, pika rejects it
        itself (requeued: a delivery counted on 3.x quorum queues), never calling us."""
        if tag in self.cancelled:
            self.nacked.append((delivery_tag, True))
            return
        _queue, on_message = self.consumers[tag]
        method = SimpleNamespace(delivery_tag=delivery_tag, redelivered=False, consumer_tag=tag)
        on_message(self, method, properties(), b"task")  # type: ignore[operator]


def two_subscriptions(version: tuple[int, ...], slots: int = 1):
    taking, outbox, _channel = intake(version, "quorum")
    taking.slots = slots
    channel = CancellingChannel()
    running: list[int] = []

    def arrived(_channel, method, props, body) -> None:  # the consumer: one slot
        if running:
            taking.hold(channel, method, props, body)  # type: ignore[arg-type]
        else:
            running.append(method.delivery_tag)

    taking.subscribe(channel, arrived)  # type: ignore[arg-type]
    taking.subscribe_second(channel)  # type: ignore[arg-type]
    urgent, first, second = channel.consumers
    assert [channel.consumers[tag][0] for tag in (urgent, first, second)] == \
        ["jobs.urgent", "jobs", "jobs"] and taking.normal_subscriptions == 2
    assert channel.priorities == [0, 0, -1], "served only while every first subscription is full"
    return taking, outbox, channel, running, first, second


@pytest.mark.parametrize("version, by_copy", [((3, 10, 8), True), ((4, 3, 6), False)])
def test_letting_go_cancels_the_subscription_whose_task_waits_and_gives_that_task_back(
        version, by_copy):
    """As a pause gives back (give_back.py): a copy where a nack counts a delivery, else the
    nack."""
    taking, outbox, channel, running, first, second = two_subscriptions(version)
    channel.deliver_to(second, 1)   # runs (the second subscription's)
    channel.deliver_to(first, 2)    # waits in hand
    assert running == [1] and len(taking.lanes) == 1
    assert taking.hold_one_less(channel)  # type: ignore[arg-type]
    assert channel.cancelled == [first], "the one whose task waits, not the running one's"
    assert channel.waited == [first], "with a callback: else pika keeps the tag till the end"
    assert taking.normal_subscriptions == 1 and len(taking.lanes) == 0
    if by_copy:
        assert [copy.routing_key for copy in outbox.copies] == ["jobs"] and channel.nacked == []
    else:
        assert channel.nacked == [(2, True)] and outbox.copies == []
    assert not taking.hold_one_less(channel), "one subscription left: nothing more to let go"


def test_nothing_waiting_nothing_cancelled():
    taking, _outbox, channel, running, _first, second = two_subscriptions((4, 3, 6))
    channel.deliver_to(second, 1)
    assert not taking.hold_one_less(channel)  # type: ignore[arg-type]
    assert channel.cancelled == [] and taking.normal_subscriptions == 2 and running == [1]


def test_a_pause_cancels_both_and_a_new_subscription_starts_with_one():
    taking, _outbox, channel, _running, first, second = two_subscriptions((4, 3, 6))
    channel.deliver_to(first, 1)
    channel.deliver_to(second, 2)
    assert taking.cancel(channel) == 1  # type: ignore[arg-type]
    assert channel.nacked == [(2, True)] and taking.normal_subscriptions == 0
    taking.subscribe(channel, lambda *_args: None)  # type: ignore[arg-type]
    assert taking.normal_subscriptions == 1


def test_the_first_subscription_let_go_is_made_again_once_the_slot_is_free():
    """The task that ran was the second subscription's (priority -1), the one waiting the
    first's: the first is let go (else the broker would send it another at once), and made
    again when the slot frees, so the worker is not left served only after every other one.
    The low one is not cancelled then: a task may be on its way to it (pika would reject it)."""
    taking, outbox, channel, _running, first, second = two_subscriptions((3, 10, 8))
    channel.deliver_to(second, 1)   # runs
    channel.deliver_to(first, 2)    # waits
    assert taking.hold_one_less(channel)  # type: ignore[arg-type]
    assert channel.cancelled == [first] and taking.only_low and len(outbox.copies) == 1
    LookAhead(taking, nothing, lambda: None).after_task(5.0, channel)  # type: ignore[arg-type]
    third = list(channel.consumers)[-1]
    assert channel.priorities[-1] == 0 and channel.cancelled == [first]
    assert not taking.only_low and taking.normal_subscriptions == 2
    channel.deliver_to(second, 3)   # on its way to the low one meanwhile: to the worker
    channel.deliver_to(third, 4)    # and the new first one's
    assert len(taking.lanes) == 2 and len(outbox.copies) == 1 and channel.nacked == []


def test_several_slots_let_go_the_low_subscription_whichever_brought_the_waiting_task():
    """The first subscription counts the tasks running in the other slots: it stays (a new one
    would count from zero: the worker would hold more than its slots). The low one goes, and
    the task waiting goes back. A low one is made again after a short task, but not while the
    task of the one let go is still in hand: the broker counts it against no subscription of
    ours any more, and the worker would hold two tasks more than its slots."""
    taking, outbox, channel, running, first, second = two_subscriptions((4, 3, 6), slots=4)
    channel.deliver_to(second, 1)   # runs
    channel.deliver_to(first, 2)    # waits
    assert taking.hold_one_less(channel)  # type: ignore[arg-type]
    assert channel.cancelled == [second] and channel.nacked == [(2, True)]
    assert taking.normal_subscriptions == 1 and not taking.only_low and len(taking.lanes) == 0
    in_hand = {second, first}  # task 1 runs on; another slot's short task came through the first
    ahead = LookAhead(taking, nothing, lambda: None,  # type: ignore[arg-type]
                      subscriptions_in_hand=lambda: in_hand)
    ahead.after_task(5.0, channel)  # type: ignore[arg-type]
    assert taking.normal_subscriptions == 1, "a long task: nothing restored, nothing added"
    ahead.after_task(0.0, channel)  # type: ignore[arg-type]
    assert taking.normal_subscriptions == 1, "task 1 of the low one let go is still in hand"
    in_hand = {first}  # task 1 is over
    ahead.after_task(0.0, channel)  # type: ignore[arg-type]
    assert taking.normal_subscriptions == 2 and channel.priorities[-1] == -1
    assert outbox.copies == [] and running == [1]


def test_a_long_task_after_a_long_one_does_not_restore_anything():
    taking, _outbox, channel, _running, _first, _second = two_subscriptions((4, 3, 6))
    LookAhead(taking, nothing, lambda: None).after_task(5.0, channel)  # type: ignore[arg-type]
    assert channel.cancelled == [] and taking.normal_subscriptions == 2


@pytest.mark.parametrize("step, counted", [
    (Step.RECEIVED, True), (Step.WAITING_TURN, True), (Step.RUNNING, True),
    (Step.CONFIRMING, False), (Step.JOURNALED, False), (Step.DECIDING, False),
])
def test_time_in_hand_counts_until_the_work_ends_not_the_confirm(step, counted):
    """A zero-work task whose record waits 60 ms for its confirm (a loaded cluster) is not a
    long task: giving back the one held behind it would undo the look-ahead every beat."""
    held = SimpleNamespace(in_hand=True, step=step,
                           delivery=SimpleNamespace(received=time.time() - 5.0))
    age = InHand([SimpleNamespace(settlement=held)], logging.getLogger("t")).in_hand_for()  # type: ignore[list-item]
    assert (age is not None and age >= 5.0) is counted


def test_with_several_slots_the_youngest_task_says_how_long_a_held_one_waits():
    """A held task starts when the first slot frees: behind one long task and one short one it
    is not behind a long task (given back then, it would come straight back on a busy queue)."""
    now = time.time()
    slots = [SimpleNamespace(settlement=SimpleNamespace(
        in_hand=True, step=Step.RUNNING, delivery=SimpleNamespace(received=now - age)))
        for age in (300.0, 0.01)]
    age = InHand(slots, logging.getLogger("t")).in_hand_for()  # type: ignore[arg-type]
    assert age is not None and age < SHORT_SECONDS


def test_the_held_bound_reads_the_one_that_would_go_back():
    clock = Clock()
    lanes = Lanes(clock)
    lanes.hold(held_at(1), urgent=False)
    clock.now += 61
    lanes.hold(held_at(2), urgent=False)  # (the older one waits behind urgent ones: lanes.py)
    assert lanes.normal_held_for() == 0.0 and lanes.last_normal().method.delivery_tag == 2  # type: ignore[union-attr]


def held_at(tag: int) -> Held:
    return Held(None, SimpleNamespace(delivery_tag=tag, consumer_tag="c"), properties(), b"t")  # type: ignore[arg-type]
