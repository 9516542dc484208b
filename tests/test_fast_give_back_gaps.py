"""Three gaps of the give-back and urgent paths (worker/lanes.py, in_hand.py, policy.py), without
a broker; the fakes are tests/test_fast_give_back.py's.

1. A stop that no longer waits for an alarm (in_hand.py ``give_back_unconfirmed``) gives back
   the originals of give-back copies the broker has not confirmed too (a nack, one line),
   instead of leaving them unacked until the connection closes.
2. Deliveries given back after the pause or stop's "gave N waiting task(s) back" line (on their
   way when it came) are said in one line of their own, not left out of the count.
3. A retry of a task taken from ``<queue>.urgent`` waits in ``<queue>.urgent.retry``, which
   dead-letters it back to ``<queue>.urgent``: it stays urgent. Urgency is ``Delivery.urgent``,
   set by the intake from the subscription a delivery came through, never a header: a message
   cannot make itself (or a copy of it) urgent. The real broker's side:
   tests/test_urgent_retry.py."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pika
import pytest

from taskqueue.broker.config import QueueSpec
from taskqueue.broker.topology import Topology
from taskqueue.wire.messages import CHECK_FROM, PRIOR_DELIVERIES
from taskqueue.worker import lanes
from taskqueue.worker.account import WorkerOptions
from taskqueue.worker.consumer import TaskConsumer
from taskqueue.worker.delivery import Delivery, Overruns
from taskqueue.worker.in_hand import InHand
from taskqueue.worker.life import DeliveryLife, WorkerParts
from taskqueue.worker.phase import Phase
from taskqueue.worker.policy import Verdict, after_work, dead_letter, give_back, park
from taskqueue.worker.settlement import Step
from taskqueue.worker.work import Outcome
from tests.test_fast_give_back import PUBLISHED, held, intake, subscribed

LOG = logging.getLogger("test_fast_give_back_gaps")
OPTIONS = WorkerOptions(name="w", max_retries=2, retry_delay=1.5)


# --- 1. a stop during an alarm: the give-back copies not confirmed -----------------------------
def given_back_unconfirmed():
    """Two held deliveries given back by copy (3.x quorum), then an alarm: the copies were on
    their way, so they stay unconfirmed (the journal cannot take a copy already sent)."""
    taking, outbox, channel = intake()
    taking.lanes.hold(held(channel, 1), urgent=True)
    taking.lanes.hold(held(channel, 2), urgent=False)
    assert taking.cancel(None) == 2 and len(outbox.copies) == 2
    outbox.blocked = True
    giving_back = taking.giving_back
    assert giving_back is not None
    assert [s.step for s in giving_back.going] == [Step.CONFIRMING, Step.CONFIRMING]
    return taking, outbox, channel, giving_back


def test_what_happened_before_the_originals_stayed_unacked_until_the_channel_went():
    """Without the fix nothing but the channel's loss ended them: the stop's give-back of the
    unconfirmed (the slots') left them, and the close dropped them without a word."""
    taking, _outbox, channel, giving_back = given_back_unconfirmed()
    InHand([], LOG).give_back_unconfirmed()  # the slots only: as the old tick called it
    assert channel.nacked == [] and channel.acked == [] and len(giving_back.going) == 2
    taking.forget()  # the consumer's connection closes: the broker has them back, unsaid
    assert giving_back.going == [] and channel.nacked == []


def test_a_stop_that_cannot_wait_nacks_the_originals_of_unconfirmed_copies_in_one_line(caplog):
    _taking, outbox, channel, giving_back = given_back_unconfirmed()
    with caplog.at_level(logging.WARNING):
        InHand([], LOG).give_back_unconfirmed(giving_back)
    assert channel.nacked == [(1, True), (2, True)] and channel.acked == []
    assert giving_back.going == []
    assert all(copy.cancelled for copy in outbox.copies), "not sent again on a reconnect"
    [line] = [record.getMessage() for record in caplog.records]
    assert line.startswith("[w] the broker has not confirmed the copies of 2 task(s) given "
                           "back (blocked?): stopping, they go back to the queue with a nack"), line
    assert "refused" not in line
    for copy in outbox.copies:  # the alarm ends after all: the originals are not ours now
        copy.on_settled(True)
    assert channel.acked == []
    caplog.clear()
    InHand([], LOG).give_back_unconfirmed(giving_back)  # the next beat: nothing more to say
    assert caplog.records == []


def test_many_unconfirmed_copies_are_still_one_line():
    taking, outbox, channel = intake()
    for tag in range(1, 13):
        taking.lanes.hold(held(channel, tag), urgent=tag % 2 == 0)
    taking.cancel(None)
    assert taking.giving_back is not None
    said: list[str] = []
    outbox.log = SimpleNamespace(warning=lambda text, *args: said.append(text % args))
    assert taking.giving_back.unconfirmed_back() == 12
    assert len(said) == 1 and said[0].endswith("; and 7 more"), said
    assert len(channel.nacked) == 12


def test_when_the_outbox_has_finished_the_stopping_worker_gives_them_back_first():
    """The outbox ends the stop at its grace (5 s) and the beat's give-back may come after it:
    nothing left unconfirmed can be confirmed then, so the consumer gives them back before it
    closes (a nack, said), whichever comes first."""
    taking, _outbox, channel, _giving_back = given_back_unconfirmed()
    ended: list[str] = []
    worker = SimpleNamespace(_stop_since=1.0, in_hand=InHand([], LOG), intake=taking,
                             phase=None, outbox=SimpleNamespace(error=None),
                             finish=lambda: ended.append("finish"))
    TaskConsumer._on_outbox_finished(worker)  # type: ignore[arg-type]
    assert channel.nacked == [(1, True), (2, True)] and ended == ["finish"]


# --- 2. deliveries given back after the line that counted the held ones -----------------------
def test_deliveries_given_back_after_the_cancel_are_said_in_one_line_of_their_own(caplog):
    taking, outbox, channel, taken = subscribed()
    taking.log, taking.worker = LOG, "w"
    taking.lanes.hold(held(channel, 1), urgent=False)
    assert taking.cancel(channel) == 1, "the pause's own line counts the held one"
    with caplog.at_level(logging.INFO, logger=LOG.name):
        taking.say_late()
        assert caplog.records == [], "nothing came late yet"
        channel.deliver("jobs.urgent", 2)
        channel.deliver("jobs", 3)
        channel.deliver("jobs", 4)
        taking.say_late()
        taking.say_late()  # said once
    [line] = [record.getMessage() for record in caplog.records]
    assert line == ("[w] gave 3 task(s) back to the queue that were on their way to us when we "
                    "stopped taking tasks"), line
    assert taken == [] and len(outbox.copies) == 4


def test_a_late_delivery_on_a_closed_channel_is_not_counted():
    taking, _outbox, channel, _taken = subscribed()
    taking.cancel(channel)
    channel.is_open = False
    channel.deliver("jobs", 8)
    assert taking.late == 0


def test_the_late_line_comes_before_the_stopping_worker_ends():
    """A stop whose outbox finishes before the next beat still says them."""
    taking, _outbox, channel, _taken = subscribed()
    said: list[str] = []
    taking.log = SimpleNamespace(info=lambda text, *args: said.append(text % args))
    taking.worker = "w"
    taking.cancel(channel)
    channel.deliver("jobs", 5)
    worker = SimpleNamespace(_stop_since=None, in_hand=InHand([], LOG), intake=taking,
                             phase=None, outbox=SimpleNamespace(error=None), finish=lambda: None)
    TaskConsumer._on_outbox_finished(worker)  # type: ignore[arg-type]
    assert said == ["[w] gave 1 task(s) back to the queue that were on their way to us when we "
                    "stopped taking tasks"], said


# --- 3. an urgent task's retry stays urgent --------------------------------------------------
STRANGER = "x-urgent"  # a header another producer may send (the name of the old in-memory mark)
JOBS = QueueSpec("jobs")


def delivery(urgent: bool = False, **headers: object) -> Delivery:
    return Delivery(None, 1, pika.BasicProperties(headers=headers or None),  # type: ignore[arg-type]
                    b"boom", False, urgent=urgent)


def failed(task: Delivery) -> Verdict:
    return after_work(task, Outcome(False, reason="boom"), OPTIONS, JOBS, "w/1")


def test_a_retry_of_a_task_from_the_urgent_queue_goes_to_its_own_retry_queue():
    verdict = failed(delivery(urgent=True))
    assert (verdict.outcome, verdict.copy_to, verdict.expiration) == (
        "retry", "jobs.urgent.retry", "1500")
    normal = failed(delivery())
    assert normal.copy_to == "jobs.retry"
    assert verdict.headers == normal.headers, "urgency is no header: the queue says it"


def test_a_header_never_makes_a_task_urgent_and_is_carried_as_any_other():
    """Only the queue a delivery came from makes it urgent (``Delivery.urgent``, the intake's):
    a stranger's ``x-urgent`` is a header nothing reads, so a copy keeps it as it keeps the
    others, and it makes neither this attempt nor a later one urgent."""
    task = delivery(**{STRANGER: 1})
    verdict = failed(task)
    assert verdict.copy_to == "jobs.retry"
    again = Delivery(None, 2, pika.BasicProperties(headers=verdict.headers),  # type: ignore[arg-type]
                     b"boom", False)
    assert failed(again).copy_to == "jobs.retry"
    for copy_headers in (verdict.headers, dead_letter(task, "bad", JOBS, "w").headers,
                         give_back(task, "jobs").headers, park(task, 3.0, JOBS).headers):
        assert copy_headers[STRANGER] == 1


def test_no_copy_of_an_urgent_task_says_it_was_one():
    """Its copies go where the queue says (a retry to ``<queue>.urgent.retry``, a give-back to
    ``<queue>.urgent``), with the headers a normal task's copy has: nothing to trust later."""
    urgent, normal = delivery(True, **{"x-retries": 1}), delivery(**{"x-retries": 1})
    urgent.received = normal.received
    for copy_of in (lambda task: dead_letter(task, "bad", JOBS, "w"),
                    lambda task: give_back(task, "jobs.urgent"),
                    lambda task: park(task, 3.0, JOBS)):
        assert copy_of(urgent).headers == copy_of(normal).headers


def test_its_retry_queue_dead_letters_back_to_the_urgent_queue():
    """What ``Intake.prepare`` declares: config.py's .retry companion of ``jobs.urgent``."""
    declared: list[tuple[str, dict]] = []
    ready: list[bool] = []
    original = lanes.declare_or_adopt
    lanes.declare_or_adopt = lambda _connection, name, arguments, on_done, _on_error: (
        declared.append((name, arguments)), on_done(True))  # type: ignore[assignment]
    try:
        taking = lanes.Intake("jobs", 1)
        taking.prepare(None, Topology(task_type="quorum", version=(3, 10, 8)),  # type: ignore[arg-type]
                       lambda: ready.append(True))
    finally:
        lanes.declare_or_adopt = original
    [(name, arguments)] = declared
    assert name == "jobs.urgent.retry"
    assert arguments["x-dead-letter-exchange"] == ""
    assert arguments["x-dead-letter-routing-key"] == "jobs.urgent"
    assert arguments["x-queue-type"] == "quorum"
    assert ready == [True] and taking.urgent_retry


def consuming(taking: lanes.Intake, free: int) -> tuple[SimpleNamespace, list[tuple]]:
    """The consumer's own callbacks (TaskConsumer._on_message, _take_waiting) subscribed, with
    *free* slots, and a delivery life that notes what it is handed: (tag, urgent, headers)."""
    handed: list[tuple] = []
    life = SimpleNamespace(on_message=lambda _ch, method, properties, _body, urgent=False:
                           handed.append((method.delivery_tag, urgent, properties.headers)))
    worker = SimpleNamespace(phase=Phase.CONSUMING, _free_slots=[object()] * free,
                             intake=taking, life=life, _last_delivery=0.0)
    return worker, handed


@pytest.mark.parametrize("refused", [True, False])
def test_without_its_retry_queue_no_delivery_is_urgent_and_a_refusal_is_one_line(refused):
    said: list[str] = []
    original = lanes.declare_or_adopt

    def declare(_connection, _name, _arguments, on_done, on_error) -> None:
        if refused:
            on_error(SimpleNamespace(reply_code=403))
        else:
            on_done(False)

    lanes.declare_or_adopt = declare  # type: ignore[assignment]
    try:
        taking, _outbox, channel = intake()
        taking.log = SimpleNamespace(warning=lambda text, *args: said.append(text % args))
        for _ in range(2):  # (a reconnect asks again; said once)
            taking.prepare(None, Topology(task_type="quorum", version=(3, 10, 8)),  # type: ignore[arg-type]
                           lambda: None)
    finally:
        lanes.declare_or_adopt = original
    assert taking.urgent_retry is not refused
    assert len(said) == (1 if refused else 0), said
    worker, handed = consuming(taking, free=1)
    taking.subscribe(channel, lambda *args: TaskConsumer._on_message(worker, *args))  # type: ignore[arg-type]
    channel.deliver("jobs.urgent", 1)
    assert handed == [(1, not refused, None)]


def test_the_intake_makes_urgent_what_comes_from_the_urgent_queue_and_only_that():
    """Straight to a free slot or held first, a delivery reaches the life with the urgency of
    the subscription it came through; its headers are as the broker sent them."""
    taking, _outbox, channel = intake()
    taking.urgent_retry = True
    worker, handed = consuming(taking, free=1)
    taking.subscribe(channel, lambda *args: TaskConsumer._on_message(worker, *args))  # type: ignore[arg-type]
    channel.deliver("jobs.urgent", 1, **{"x-retries": 1})
    channel.deliver("jobs", 2, **{STRANGER: 1})  # a message that says it is urgent: it is not
    channel.deliver("jobs", 3)
    assert handed == [(1, True, {"x-retries": 1}), (2, False, {STRANGER: 1}), (3, False, None)]
    handed.clear()
    worker._free_slots = []  # every slot busy: held, urgent first
    channel.deliver("jobs", 4, **{STRANGER: 1})
    channel.deliver("jobs.urgent", 5)
    worker._free_slots = [object()]
    for _ in range(2):
        TaskConsumer._take_waiting(worker)  # type: ignore[arg-type]
    assert handed == [(5, True, None), (4, False, {STRANGER: 1})]


def test_the_life_builds_the_delivery_with_the_urgency_it_is_handed():
    """life.py, where pika's delivery becomes a ``Delivery``: its ``urgent`` is the intake's."""
    slot = SimpleNamespace(name="w/1", delivery=None, settlement=None)
    checked: list[object] = []
    parts = WorkerParts(LOG, JOBS, OPTIONS, [], [slot, slot],  # type: ignore[list-item]
                        SimpleNamespace(), SimpleNamespace(stats=None),  # type: ignore[arg-type]
                        SimpleNamespace(check=lambda *args: checked.append(args)),  # type: ignore[arg-type]
                        SimpleNamespace(busy=lambda: None),  # type: ignore[arg-type]
                        SimpleNamespace(state=SimpleNamespace(cancelled_runs=())),  # type: ignore[arg-type]
                        Overruns(), lambda: Phase.CONSUMING, lambda *_: None, lambda: None,
                        InHand([], LOG), lambda call: call())
    life = DeliveryLife(parts)
    for urgent in (True, False):
        life.on_message(None, SimpleNamespace(delivery_tag=1, redelivered=False, consumer_tag="c"),  # type: ignore[arg-type]
                        pika.BasicProperties(), b"task", urgent=urgent)
        assert slot.delivery is not None and slot.delivery.urgent is urgent
        assert failed(slot.delivery).copy_to == ("jobs.urgent.retry" if urgent else "jobs.retry")
    assert len(checked) == 2, "both went on to their check"


def test_held_urgent_deliveries_given_back_carry_nothing_new():
    taking, outbox, channel = intake()
    taking.urgent_retry = True
    taking.subscribe(channel, lambda *args: taking.hold(*args))  # type: ignore[arg-type]
    channel.deliver("jobs.urgent", 1, **{"x-delivery-count": 1})
    taking.cancel(channel)
    [copy] = outbox.copies
    assert copy.routing_key == "jobs.urgent"
    assert copy.properties.headers == {PRIOR_DELIVERIES: 1, CHECK_FROM: PUBLISHED}


# --- a stop gives back only what has waited for its confirm past the grace ------------------
@pytest.mark.parametrize(("stopping", "sent_ago", "given"), [
    (True, 0.002, False),  # a long drain: a task's record just sent, its confirm coming (the
                           # old beat gave back whatever was confirming once the stop was 5 s old)
    (True, 6.0, True),     # sent 6 s ago, no confirm (an alarm, a partition, a re-declare that
                           # hangs): it goes back, blocked or not
    (False, 60.0, False),  # not stopping: the outbox's own checks deal with stuck confirms
])
def test_a_stop_gives_back_what_waited_for_its_confirm_past_the_grace(stopping, sent_ago, given):
    from taskqueue.worker.settlement import Step
    requeued: list[str] = []
    held = SimpleNamespace(in_hand=True, step=Step.CONFIRMING, confirming_since=1000.0,
                           delivery=SimpleNamespace(label="row 1"),
                           requeue=lambda why: requeued.append(why) or True)
    copies: list[bool] = []
    giving_back = SimpleNamespace(
        unconfirmed_back=lambda due: copies.append(due(SimpleNamespace(confirming_since=1000.0))))
    in_hand = InHand([SimpleNamespace(settlement=held, name="w/1")], LOG)  # type: ignore[list-item]
    in_hand.give_back_if_stuck(stopping, 1000.0 + sent_ago, giving_back)  # type: ignore[arg-type]
    assert (len(requeued), copies) == ((1, [True]) if given else (0, [False] if stopping else []))
