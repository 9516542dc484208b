"""A real ``pika.channel.Channel`` (a stand-in connection under it, fed the broker's frames as
pika's connection feeds them) and broker/cancels.py: a delivery for a subscription we cancelled,
on its way when we cancelled it, comes to us (worker/lanes.py gives it back uncounted), never to
pika's basic.reject (counted on quorum queues); any tag we did not cancel keeps pika's
behaviour. The cancels go out at once, before any give-back, and a stop waits for one round
trip after them (bounded). The real broker's side: tests/test_cancel_in_flight.py."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pika
from pika import frame, spec
from pika.callback import CallbackManager
from pika.channel import Channel

from taskqueue.broker import cancels as module
from taskqueue.broker.cancels import ANSWER_WITHIN, Cancelling, fits
from tests.test_fast_give_back import intake, properties

LOG = logging.getLogger("test_fast_cancels")


class Connection:
    """What a channel reads of its connection; it keeps the methods the channel sends and the
    timers asked of its I/O loop."""

    def __init__(self) -> None:
        self.callbacks = CallbackManager()
        self.sent: list[object] = []
        self.timers: list[tuple[float, object]] = []
        self.ioloop = SimpleNamespace(call_later=lambda delay, then: self.timers.append(
            (delay, then)))

    def _send_method(self, _number: int, method: object, _content: object = None) -> None:
        self.sent.append(method)

    def method(self, channel: Channel, method: object) -> None:
        """A method frame from the broker, as the connection hands it on (its callbacks)."""
        self.callbacks.process(channel.channel_number, method, self,
                               frame.Method(channel.channel_number, method))

    def deliver(self, channel: Channel, tag: str, delivery_tag: int) -> None:
        """A delivery (method, header, body frames), as the connection hands content on."""
        body = b"task"
        number = channel.channel_number
        channel._handle_content_frame(frame.Method(number, spec.Basic.Deliver(
            consumer_tag=tag, delivery_tag=delivery_tag, exchange="", routing_key="jobs")))
        channel._handle_content_frame(frame.Header(number, len(body), properties()))
        channel._handle_content_frame(frame.Body(number, body))

    def rejected(self) -> list[int]:
        return [m.delivery_tag for m in self.sent if isinstance(m, spec.Basic.Reject)]

    def kinds(self) -> list[str]:
        return [type(m).__name__ for m in self.sent]


def opened() -> tuple[Connection, Channel]:
    connection = Connection()
    channel = Channel(connection, 1, lambda _channel: None)  # type: ignore[arg-type]
    channel.open()
    connection.method(channel, spec.Channel.OpenOk())
    assert channel.is_open
    return connection, channel


def consume(connection: Connection, channel: Channel, queue: str, got: list) -> str:
    tag = channel.basic_consume(queue, lambda _ch, method, _p, _b: got.append(
        method.delivery_tag))
    connection.method(channel, spec.Basic.ConsumeOk(consumer_tag=tag))
    return tag


def subscribed(version: tuple[int, ...] = (3, 10, 8)):
    """lanes.py ``Intake`` subscribed on a real pika channel (each RPC answered in turn): the
    intake, its outbox, the connection, the channel, the two tags, what reached the slots."""
    taking, outbox, _fake = intake(version)
    connection, channel = opened()
    got: list[int] = []
    taking.subscribe(channel, lambda _ch, method, _p, _b: got.append(method.delivery_tag))
    answer_each(connection, channel, start=1)  # (after the Channel.Open)
    tags = [m.consumer_tag for m in connection.sent if isinstance(m, spec.Basic.Consume)]
    assert len(tags) == 2, connection.sent
    connection.sent.clear()
    return taking, outbox, connection, channel, tags, got


def answer_each(connection: Connection, channel: Channel, start: int) -> None:
    """Answer each method sent from *start* on that waits for an answer, as the broker would
    (pika sends the next one at the last one's answer)."""
    answered = start
    while answered < len(connection.sent):
        sent = connection.sent[answered]
        answered += 1
        if isinstance(sent, spec.Basic.Consume):
            connection.method(channel, spec.Basic.ConsumeOk(consumer_tag=sent.consumer_tag))
        elif isinstance(sent, spec.Basic.Qos):
            connection.method(channel, spec.Basic.QosOk())


def test_the_installed_pika_fits():
    assert fits() is None, "pika changed: cancels.py falls back to pika's reject"


def test_a_pause_gives_a_task_on_its_way_back_as_a_copy_not_by_pikas_reject():
    """Paused (cancelled), a delivery the broker sent before the cancel reached it goes back
    as a confirmed copy (3.10 quorum queue: a reject counts), said in the "on their way"
    line; pika rejects nothing, before the round trip's answer or after it."""
    taking, outbox, connection, channel, tags, got = subscribed()
    answers: list[str] = []
    assert taking.cancel(channel, then=lambda: answers.append("answered")) == 0
    assert connection.kinds() == ["Cancel", "Cancel", "Qos"], "at once, nowait, then the qos"
    assert all(m.nowait for m in connection.sent if isinstance(m, spec.Basic.Cancel))
    connection.deliver(channel, tags[1], 5)  # on its way to <queue>'s subscription
    assert connection.rejected() == [], "pika rejected a task on its way: counted"
    assert not taking.answered and answers == []
    connection.method(channel, spec.Basic.QosOk())
    assert taking.answered and answers == ["answered"]
    connection.deliver(channel, tags[0], 6)  # (later still: given back all the same)
    assert got == [] and taking.late == 2 and connection.rejected() == []
    assert [copy.routing_key for copy in outbox.copies] == ["jobs", "jobs.urgent"]


def test_the_tasks_held_go_back_only_once_the_broker_has_answered_the_cancels():
    """On 4.3 a task held goes back with a nack, which pika sends at once (not in its queue of
    requests): were a subscription of ours still there at the broker, the task could come
    straight back to it. pika holds our cancels behind a request still waiting for its answer
    (here the look-ahead's second subscription, asked just before): the nacks wait for the
    answer to the round trip after the cancels."""
    taking, _outbox, connection, channel, tags, _got = subscribed((4, 3, 0))
    for number, tag in ((1, tags[1]), (2, tags[0])):
        method = SimpleNamespace(delivery_tag=number, redelivered=False, consumer_tag=tag)
        taking.hold(channel, method, properties(), b"task")  # every slot busy: held
    taking.subscribe_second(channel)  # its qos waits for its answer: pika queues the rest
    assert taking.cancel(channel) == 2
    assert connection.kinds() == ["Qos"], "the cancels wait in pika: so do the nacks"
    answer_each(connection, channel, start=0)
    kinds = connection.kinds()
    assert kinds.count("Cancel") == 3 and kinds.count("Nack") == 2, kinds
    last_cancel = max(index for index, kind in enumerate(kinds) if kind == "Cancel")
    assert kinds.index("Nack") > last_cancel, kinds


def test_a_broker_that_does_not_answer_is_waited_for_within_the_bound(caplog):
    taking, _outbox, connection, channel, tags, _got = subscribed()
    answers: list[str] = []
    taking.cancel(channel, then=lambda: answers.append("answered"))
    assert [delay for delay, _then in connection.timers] == [ANSWER_WITHIN]
    with caplog.at_level(logging.WARNING):
        connection.timers[0][1]()
    assert answers == ["answered"] and taking.answered
    assert f"has not answered our cancel within {ANSWER_WITHIN:g} s" in caplog.text
    connection.method(channel, spec.Basic.QosOk())  # the answer, late: nothing more
    assert answers == ["answered"]
    connection.deliver(channel, tags[1], 7)  # (before the close: given back at once)
    assert taking.late == 1 and connection.rejected() == []


def test_only_the_last_round_trip_answers_a_pause_then_a_resume_then_a_stop():
    taking, _outbox, connection, channel, _tags, _got = subscribed()
    answers: list[str] = []
    taking.cancel(channel, then=lambda: answers.append("pause"))
    taking.subscribe(channel, lambda *_args: None)  # resumed
    taking.cancel(channel, then=lambda: answers.append("stop"))
    connection.method(channel, spec.Basic.QosOk())  # the pause's
    assert answers == [] and not taking.answered, "the stop's cancels are not answered yet"
    answer_each(connection, channel, start=3)  # pika sends what waited, in its turn
    assert answers == ["stop"] and taking.answered
    timers = [then for _delay, then in connection.timers]
    for then in timers:
        then()  # (the bounds, after the answers: nothing more)
    assert answers == ["stop"]


def test_a_tag_we_did_not_cancel_keeps_pikas_behaviour():
    connection, channel = opened()
    got: list[int] = []
    ours, theirs = consume(connection, channel, "jobs", got), consume(connection, channel,
                                                                      "other", got)
    late: list[int] = []
    Cancelling(LOG).let_go(channel, ours, lambda _ch, method, _p, _b: late.append(
        method.delivery_tag))
    channel.basic_cancel(theirs)  # not through cancels.py: pika rejects what still comes
    connection.deliver(channel, theirs, 3)
    connection.deliver(channel, ours, 4)
    connection.method(channel, spec.Basic.CancelOk(consumer_tag=ours))
    connection.deliver(channel, ours, 5)  # (after its answer: still ours, not pika's drop)
    assert (late, got, connection.rejected()) == ([4, 5], [], [3])


def test_a_channel_lost_forgets_the_cancels_and_their_round_trip():
    taking, _outbox, _connection, channel, _tags, _got = subscribed()
    taking.cancel(channel)
    assert not taking.answered
    taking.forget()  # the channel closed: no answer comes, none is waited for
    assert taking.answered


def test_a_pika_that_does_not_fit_keeps_pikas_reject_and_says_so_once(monkeypatch, caplog):
    monkeypatch.setattr(module, "fits", lambda: "no _on_deliver")
    monkeypatch.setattr(module, "_warned", False)
    connection, channel = opened()
    tag = consume(connection, channel, "jobs", [])
    late: list[int] = []
    with caplog.at_level(logging.WARNING):
        Cancelling(LOG, "w").let_go(channel, tag, lambda *_args: late.append(1))
        assert not module.route_late(Channel(Connection(), 2, lambda _c: None),  # type: ignore
                                     lambda _tag: None, LOG, "w")
    assert caplog.text.count("does not fit") == 1 and pika.__version__ in caplog.text
    connection.deliver(channel, tag, 2)
    assert connection.rejected() == [2] and late == []


def test_stopping_now_gives_back_what_waits_for_the_answer_once():
    """A second stop request (or the last records out) before the broker answered: the held
    tasks go back now, by a copy on 3.10 quorum, not with the close (counted); the answer,
    coming later, gives back nothing twice."""
    taking, outbox, connection, channel, tags, _got = subscribed()
    for number in (1, 2):
        method = SimpleNamespace(delivery_tag=number, redelivered=False, consumer_tag=tags[1])
        taking.hold(channel, method, properties(), b"task")
    assert taking.cancel(channel) == 2 and outbox.copies == [] and not taking.answered
    taking.give_back_now()
    assert len(outbox.copies) == 2
    connection.method(channel, spec.Basic.QosOk())
    assert len(outbox.copies) == 2 and taking.answered
