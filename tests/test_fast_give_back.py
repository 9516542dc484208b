"""Held deliveries given back (worker/lanes.py ``GiveBack``, policy.give_back) without a broker:
a copy, confirmed, then the ack, where a nack would count as a delivery; the nack elsewhere, and
during an alarm. So are deliveries that come after the pause (sent before our cancel reached
the broker). The outbox and the channel are stand-ins; confirms are given by hand. The real
broker's side is tests/test_give_back.py."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pika
import pytest

from taskqueue.broker.config import QueueSpec
from taskqueue.broker.topology import Topology
from taskqueue.wire.messages import CHECK_FROM, PRIOR_DELIVERIES
from taskqueue.wire.record import CLOCK_SKEW
from taskqueue.worker.account import WorkerOptions
from taskqueue.worker.consumer import TaskConsumer
from taskqueue.worker.copies import Copy
from taskqueue.worker.delivery import Delivery, Overruns
from taskqueue.worker.give_back import GiveBack, Held
from taskqueue.worker.in_hand import InHand
from taskqueue.worker.lanes import Intake
from taskqueue.worker.life import DeliveryLife, WorkerParts
from taskqueue.worker.phase import Phase
from taskqueue.worker.policy import give_back

PUBLISHED = 1_700_000_000


class Channel:
    def __init__(self) -> None:
        self.is_open = True
        self.acked: list[int] = []
        self.nacked: list[tuple[int, bool]] = []
        self.consumers: dict[str, tuple[str, object]] = {}  # tag: (queue, callback)
        self.answers: list = []  # the qos round trips asked (cancels.py), if held
        self.hold_answers = False
        self.connection = SimpleNamespace(ioloop=SimpleNamespace(
            call_later=lambda _delay, _then: None))

    def basic_consume(self, queue: str, on_message) -> str:
        tag = f"ctag{len(self.consumers) + 1}"
        self.consumers[tag] = (queue, on_message)
        return tag

    def basic_qos(self, prefetch_count: int, callback=None) -> None:
        if callback is None:
            return
        if self.hold_answers:
            self.answers.append(callback)  # (the broker's answer: given by hand)
        else:
            callback(None)  # the broker answers at once

    def basic_cancel(self, tag: str, callback=None) -> None:
        pass  # (the broker may still have sent some: deliver() sends them)

    def deliver(self, queue: str, tag: int, **headers: object) -> None:
        """The broker sends *queue*'s consumer a delivery (cancelled or not)."""
        consumer, on_message = next((tag, callback) for tag, (name, callback)
                                    in self.consumers.items() if name == queue)
        method = SimpleNamespace(delivery_tag=tag, redelivered=False, consumer_tag=consumer)
        on_message(self, method, properties(**headers), b"task")

    def basic_ack(self, tag: int) -> None:
        self.acked.append(tag)

    def basic_nack(self, tag: int, requeue: bool) -> None:
        self.nacked.append((tag, requeue))


class Outbox:
    blocked = False
    confirming = True
    worker = "w"
    log = logging.getLogger("test_fast_give_back")

    def __init__(self) -> None:
        self.copies: list[Copy] = []
        self.watching: set = set()

    def when_blocked(self, journal_it) -> None:
        self.watching.add(journal_it)

    def forget(self, journal_it) -> None:
        self.watching.discard(journal_it)

    def publish_copy(self, copy: Copy) -> None:
        self.copies.append(copy)


def properties(**headers: object) -> pika.BasicProperties:
    return pika.BasicProperties(headers=headers or None, message_id="t.csv:3:ab", type="task",
                                timestamp=PUBLISHED, correlation_id="20261205T000000Z-ab12cd",
                                user_id="emitter", delivery_mode=2)


def delivery(tag: int, redelivered: bool = False, **headers: object) -> Delivery:
    return Delivery(None, tag, properties(**headers), b"t", redelivered)  # type: ignore[arg-type]


def held(channel: Channel, tag: int, redelivered: bool = False, **headers: object) -> Held:
    method = SimpleNamespace(delivery_tag=tag, redelivered=redelivered)
    return Held(channel, method, properties(**headers), b"task")  # type: ignore[arg-type]


def intake(version: tuple[int, ...] = (3, 10, 8), kind: str = "quorum"):
    outbox, channel = Outbox(), Channel()
    topology = Topology(task_type=kind, version=version)
    taking = Intake("jobs", 1, GiveBack(outbox, lambda: topology))  # type: ignore[arg-type]
    return taking, outbox, channel


# --- the copy's headers (policy.give_back) --------------------------------------------------
def test_a_redelivery_keeps_its_count_and_the_give_back_adds_none():
    task = delivery(1, True, **{"x-delivery-count": 2, PRIOR_DELIVERIES: 1, "x-retries": 1,
                                "x-death": [{"count": 1}], "x-first-death-queue": "jobs.retry"})
    verdict = give_back(task, "jobs.urgent")
    assert (verdict.outcome, verdict.copy_to) == ("given back", "jobs.urgent")
    assert verdict.headers == {"x-retries": 1, PRIOR_DELIVERIES: 3,
                               CHECK_FROM: PUBLISHED}, "the broker's headers are not carried"


def test_both_copies_a_kill_before_the_ack_leaves_are_checked_from_before_either_ran():
    """Killed between the copy's confirm and the ack: the original comes again (redelivered)
    and so does the copy. Each is checked from no later than the task's first publish, so the
    one taken second reads the done record of the first and is acked unrun. (Not from the
    give-back: a copy published again by the emitter, taken by another worker while this one
    held the first, may have been done long before.)"""
    original = delivery(1)
    assert not original.needs_check, "a first delivery of a first publish: no reading"
    copy = delivery(2, **give_back(original, "jobs").headers)
    again = delivery(3, redelivered=True)
    assert copy.needs_check and again.needs_check
    assert copy.check_from == PUBLISHED - CLOCK_SKEW == again.check_from
    assert copy.deliveries == 0


def test_a_check_from_it_carries_stays():
    task = delivery(1, **{CHECK_FROM: PUBLISHED + 60})
    assert give_back(task, "jobs").headers[CHECK_FROM] == PUBLISHED + 60


# --- carried out (lanes.py GiveBack) ---------------------------------------------------------
def test_on_3x_quorum_a_copy_to_its_own_queue_then_the_ack_once_confirmed():
    taking, outbox, channel = intake()
    taking.lanes.hold(held(channel, 1), urgent=False)
    taking.lanes.hold(held(channel, 2, redelivered=True, **{"x-delivery-count": 1}), urgent=True)
    assert taking.cancel(None) == 2
    assert [copy.routing_key for copy in outbox.copies] == ["jobs.urgent", "jobs"]
    assert channel.acked == [] and channel.nacked == [], "nothing before the confirms"
    urgent, normal = outbox.copies
    assert urgent.properties.headers[PRIOR_DELIVERIES] == 1
    assert (urgent.properties.message_id, urgent.properties.type,
            urgent.properties.correlation_id, urgent.properties.user_id) == (
        "t.csv:3:ab", "task", "20261205T000000Z-ab12cd", None)
    normal.on_settled(True)
    urgent.on_settled(True)
    assert channel.acked == [1, 2] and channel.nacked == []
    assert taking.giving_back is not None and taking.giving_back.going == []


def test_a_refused_copy_puts_the_original_back_with_a_nack():
    taking, outbox, channel = intake()
    taking.lanes.hold(held(channel, 5), urgent=False)
    taking.cancel(None)
    outbox.copies[0].on_settled(False)
    assert channel.nacked == [(5, True)] and channel.acked == []


def test_the_channel_lost_before_the_confirm_the_copy_is_not_sent_the_ack_never_given():
    taking, outbox, channel = intake()
    taking.lanes.hold(held(channel, 5), urgent=False)
    taking.cancel(None)
    channel.is_open = False
    taking.forget()
    assert outbox.copies[0].cancelled
    outbox.copies[0].on_settled(True)
    assert channel.acked == [] and channel.nacked == []


@pytest.mark.parametrize(("version", "kind", "blocked", "confirming"), [
    ((3, 10, 8), "quorum", True, True),  # an alarm: the nack, as before (commented in lanes.py)
    ((3, 10, 8), "quorum", False, False),  # the publishing connection away
    ((4, 3, 6), "quorum", False, True),  # 4.3 does not count a nack
    ((3, 10, 8), "classic", False, True),  # nor does a classic queue
])
def test_a_nack_where_it_counts_nothing_or_no_copy_can_be_confirmed(version, kind, blocked,
                                                                    confirming):
    taking, outbox, channel = intake(version, kind)
    outbox.blocked, outbox.confirming = blocked, confirming
    taking.lanes.hold(held(channel, 9), urgent=True)
    assert taking.cancel(None) == 1
    assert channel.nacked == [(9, True)] and outbox.copies == []


def test_a_header_it_cannot_read_goes_back_with_a_nack():
    taking, outbox, channel = intake()
    taking.lanes.hold(held(channel, 4, **{"x-delivery-count": "lots"}), urgent=False)
    taking.cancel(None)
    assert channel.nacked == [(4, True)] and outbox.copies == []


# --- deliveries that come after the pause (lanes.py Intake) ----------------------------------
def subscribed(version: tuple[int, ...] = (3, 10, 8), kind: str = "quorum"):
    taking, outbox, channel = intake(version, kind)
    taken: list[int] = []
    taking.subscribe(channel, lambda _ch, method, _props, _body: taken.append(
        method.delivery_tag))  # type: ignore[arg-type]
    return taking, outbox, channel, taken


def test_a_delivery_that_comes_after_the_pause_goes_back_as_a_copy_where_a_nack_counts():
    """On its way when the pause came: on 3.x quorum a nack would count it as a delivery,
    so it goes back as the held ones do, by a copy to the queue it came from, then the ack."""
    taking, outbox, channel, taken = subscribed()
    channel.deliver("jobs", 1)
    assert taken == [1], "while subscribed: to the consumer"
    taking.cancel(channel)  # paused
    channel.deliver("jobs.urgent", 2, **{"x-delivery-count": 1})
    channel.deliver("jobs", 3)
    assert taken == [1], "after the cancel: never to a slot"
    assert channel.nacked == [], "no nack: it would count as a delivery"
    assert [copy.routing_key for copy in outbox.copies] == ["jobs.urgent", "jobs"]
    assert outbox.copies[0].properties.headers[PRIOR_DELIVERIES] == 1
    for copy in outbox.copies:
        copy.on_settled(True)
    assert channel.acked == [2, 3]
    taking.subscribe(channel, lambda *_args: taken.append(0))  # resumed: a new subscription
    channel.deliver("jobs", 4)  # (the old consumer's, late)
    assert taken == [1] and len(outbox.copies) == 3


def test_through_the_consumer_a_delivery_after_the_pause_is_given_back_by_copy_too():
    """The consumer's own callback (TaskConsumer._on_message) and delivery life: one held
    while the slot is busy, then the pause, then one that was on its way. Both go back by a
    copy; neither by the nack (the life's, before: counted as a delivery on 3.x quorum)."""
    taking, outbox, channel = intake()
    phase = Phase.CONSUMING
    parts = WorkerParts(logging.getLogger("test"), QueueSpec("jobs"), WorkerOptions(name="w"),
                        [], [], outbox, SimpleNamespace(stats=None),  # type: ignore[arg-type]
                        None, None, None, Overruns(),  # type: ignore[arg-type]
                        lambda: phase, lambda *_: None, lambda: None,
                        InHand([], logging.getLogger("test")), lambda call: call())
    worker = SimpleNamespace(phase=phase, _free_slots=[], intake=taking,
                             life=DeliveryLife(parts), _last_delivery=0.0)
    taking.subscribe(channel, lambda *args: TaskConsumer._on_message(
        worker, *args))  # type: ignore[arg-type]
    channel.deliver("jobs.urgent", 1)  # every slot busy: held
    phase = worker.phase = Phase.PAUSED
    assert taking.cancel(channel) == 1
    channel.deliver("jobs", 2)  # sent before the cancel reached the broker
    assert channel.nacked == []
    assert [copy.routing_key for copy in outbox.copies] == ["jobs.urgent", "jobs"]
    for copy in outbox.copies:
        copy.on_settled(True)
    assert channel.acked == [1, 2]


@pytest.mark.parametrize(("version", "kind"), [((4, 3, 6), "quorum"), ((3, 10, 8), "classic")])
def test_a_delivery_after_the_pause_is_nacked_where_a_nack_counts_nothing(version, kind):
    taking, outbox, channel, taken = subscribed(version, kind)
    taking.cancel(channel)
    channel.deliver("jobs", 7)
    assert channel.nacked == [(7, True)] and outbox.copies == [] and taken == []


def test_a_delivery_after_the_channel_went_is_left_to_the_broker():
    taking, outbox, channel, taken = subscribed()
    taking.forget()
    channel.is_open = False
    channel.deliver("jobs", 8)
    assert (channel.nacked, channel.acked, outbox.copies, taken) == ([], [], [], [])


def test_a_refused_copy_is_said_in_one_warning_which_task_and_why(caplog):
    taking, outbox, channel = intake()
    taking.lanes.hold(held(channel, 5), urgent=True)
    taking.cancel(None)
    with caplog.at_level(logging.WARNING, logger=Outbox.log.name):
        outbox.copies[0].on_settled(False)
    assert channel.nacked == [(5, True)]
    [line] = [record.getMessage() for record in caplog.records]
    assert line.startswith("[w] could not give row 3, id t.csv:3:ab back to 'jobs.urgent' as a "
                           "copy: the broker refused it"), line
    assert "it went back with a nack, which counts as a delivery" in line, line


def test_a_give_back_that_fails_says_so_and_nacks_never_raising_into_pika(caplog):
    """GiveBack runs in a consumer's callback: a failure must not end pika's loop."""
    taking, outbox, channel = intake()

    def broken(_copy: Copy) -> None:
        raise RuntimeError("the outbox is broken")

    outbox.publish_copy = broken  # type: ignore[method-assign]
    taking.lanes.hold(held(channel, 1), urgent=False)
    assert taking.cancel(None) == 1  # raised nothing
    assert channel.nacked == [(1, True)] and channel.acked == []
    assert "could not give a delivery back" in caplog.text
