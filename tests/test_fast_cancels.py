"""A real ``pika.channel.Channel`` (a stand-in connection under it, fed the broker's frames as
pika's connection feeds them) and broker/cancels.py: a delivery for a subscription we cancelled,
on its way before the cancel-ok, comes to us (worker/lanes.py gives it back uncounted), never to
pika's basic.reject (counted on 3.x quorum queues); after the cancel-ok, and for any tag we did
not cancel, pika's behaviour stays. The real broker's side: tests/test_cancel_in_flight.py."""

from __future__ import annotations

import logging

import pika
from pika import frame, spec
from pika.callback import CallbackManager
from pika.channel import Channel

from tests.test_fast_give_back import intake, properties


class Connection:
    """What a channel reads of its connection; it keeps the methods the channel sends."""

    def __init__(self) -> None:
        self.callbacks = CallbackManager()
        self.sent: list[object] = []

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


LOG = logging.getLogger("test_fast_cancels")


def test_the_installed_pika_fits():
    from taskqueue.broker.cancels import fits
    assert fits() is None, "pika changed: cancels.py falls back to pika's reject"


def test_on_its_way_after_our_cancel_it_comes_to_us_until_the_cancel_ok():
    from taskqueue.broker.cancels import Cancels
    connection, channel = opened()
    got: list[int] = []
    tag = consume(connection, channel, "jobs", got)
    late: list[int] = []
    cancels = Cancels.of(channel, LOG)
    cancels.cancel(tag, lambda _ch, method, _p, _b: late.append(method.delivery_tag))
    assert any(isinstance(m, spec.Basic.Cancel) and not m.nowait for m in connection.sent)
    connection.deliver(channel, tag, 7)  # sent before our cancel reached the broker
    assert (got, connection.rejected()) == ([], [])
    assert late == [] and cancels.unanswered == 1, "handed on once the cancel is answered"
    connection.method(channel, spec.Basic.CancelOk(consumer_tag=tag))
    assert late == [7] and cancels.unanswered == 0
    connection.deliver(channel, tag, 8)  # (none comes after the cancel-ok: pika's path again)
    assert late == [7] and connection.rejected() == []


def test_a_tag_we_did_not_cancel_keeps_pikas_behaviour():
    from taskqueue.broker.cancels import Cancels
    connection, channel = opened()
    got: list[int] = []
    ours, theirs = consume(connection, channel, "jobs", got), consume(connection, channel,
                                                                      "other", got)
    late: list[int] = []
    Cancels.of(channel, LOG).cancel(ours, lambda _ch, method, _p, _b: late.append(
        method.delivery_tag))
    channel.basic_cancel(theirs)  # not through cancels.py: pika rejects what still comes
    connection.deliver(channel, theirs, 3)
    connection.deliver(channel, ours, 4)
    connection.method(channel, spec.Basic.CancelOk(consumer_tag=ours))
    assert (late, got, connection.rejected()) == ([4], [], [3])


def test_each_cancel_ok_answers_its_own_tag_and_a_stop_waits_for_all():
    """pika's basic_cancel callback is not filtered by tag (it would fire on the first
    cancel-ok for both); cancels.py hears each tag's own. What came meanwhile is handed on once
    both are answered: pika sends the second cancel at the first one's cancel-ok, so until then
    that subscription is still there at the broker (a task given back could come straight
    back)."""
    from taskqueue.broker.cancels import Cancels
    connection, channel = opened()
    got: list[int] = []
    urgent, normal = consume(connection, channel, "jobs.urgent", got), consume(
        connection, channel, "jobs", got)
    cancels, late = Cancels.of(channel, LOG), []
    for tag in (urgent, normal):
        cancels.cancel(tag, lambda _ch, method, _p, _b: late.append(method.delivery_tag))
    timers: list = []
    stopped: list[str] = []
    assert not cancels.when_answered(lambda: stopped.append("stop"), 5.0,
                                     lambda delay, then: timers.append(then))
    connection.deliver(channel, urgent, 8)
    assert [m.consumer_tag for m in connection.sent if isinstance(m, spec.Basic.Cancel)] == [
        urgent], "pika sends one cancel at a time"
    connection.method(channel, spec.Basic.CancelOk(consumer_tag=urgent))
    assert (stopped, late) == ([], []) and cancels.unanswered == 1
    connection.deliver(channel, normal, 9)  # still on its way to the other one
    connection.method(channel, spec.Basic.CancelOk(consumer_tag=normal))
    assert (stopped, late, connection.rejected()) == (["stop"], [8, 9], [])
    timers[0]()  # the bound, after the answers: nothing more
    assert stopped == ["stop"]


def test_a_broker_that_does_not_answer_is_waited_for_within_the_bound(caplog):
    from taskqueue.broker.cancels import Cancels
    connection, channel = opened()
    tag = consume(connection, channel, "jobs", [])
    cancels, late = Cancels.of(channel, LOG), []
    cancels.cancel(tag, lambda _ch, method, _p, _b: late.append(method.delivery_tag))
    connection.deliver(channel, tag, 6)
    timers: list = []
    stopped: list[str] = []
    assert not cancels.when_answered(lambda: stopped.append("stop"), 5.0,
                                     lambda delay, then: timers.append((delay, then)))
    assert not cancels.when_answered(lambda: stopped.append("again"), 5.0,
                                     lambda delay, then: timers.append((delay, then)))
    assert [delay for delay, _then in timers] == [5.0], "one bound for the wait"
    with caplog.at_level(logging.WARNING):
        timers[0][1]()
    assert stopped == ["stop", "again"] and late == [6], "given back before the close"
    connection.deliver(channel, tag, 7)  # (before the close: given back at once now)
    assert late == [6, 7] and connection.rejected() == []
    assert "has not answered our cancel of 1 subscription(s) within 5 s" in caplog.text
    assert cancels.when_answered(lambda: stopped.append("later"), 5.0, lambda *_a: None)


def test_a_pause_gives_a_task_on_its_way_back_as_a_copy_not_by_pikas_reject():
    """lanes.py ``Intake`` on a real pika channel: paused (cancelled), a delivery the broker
    sent before the cancel reached it goes back as a confirmed copy (3.10 quorum queue: a
    nack or reject counts), said in the "on their way" line; pika rejects nothing."""
    taking, outbox, _fake = intake()
    connection, channel = opened()
    got: list[int] = []
    taking.subscribe(channel, lambda _ch, method, _p, _b: got.append(method.delivery_tag))
    answered = 1  # (the Channel.Open)
    while answered < len(connection.sent):  # pika sends the next one at the last one's answer
        sent = connection.sent[answered]
        answered += 1
        connection.method(channel, spec.Basic.ConsumeOk(consumer_tag=sent.consumer_tag)
                          if isinstance(sent, spec.Basic.Consume) else spec.Basic.QosOk())
    tags = [m.consumer_tag for m in connection.sent if isinstance(m, spec.Basic.Consume)]
    assert len(tags) == 2, connection.sent
    assert taking.cancel(channel) == 0  # paused: nothing held
    connection.deliver(channel, tags[1], 5)  # on its way to <queue>'s subscription
    assert connection.rejected() == [], "pika rejected a task on its way: counted on 3.x"
    assert not taking.when_answered(lambda: None, 5.0, lambda *_a: None)
    for tag in tags:
        connection.method(channel, spec.Basic.CancelOk(consumer_tag=tag))
    assert taking.when_answered(lambda: None, 5.0, lambda *_a: None)
    assert got == [] and taking.late == 1
    assert [copy.routing_key for copy in outbox.copies] == ["jobs"]


def test_a_pika_that_does_not_fit_gets_todays_cancel_and_one_line(monkeypatch, caplog):
    from taskqueue.broker import cancels as module
    monkeypatch.setattr(module, "fits", lambda: "no _on_deliver")
    monkeypatch.setattr(module, "_warned", False)
    connection, channel = opened()
    tag = consume(connection, channel, "jobs", [])
    with caplog.at_level(logging.WARNING):
        shim = module.Cancels.of(channel, LOG)
        module.Cancels(Channel(Connection(), 2, lambda _c: None), LOG)  # type: ignore[arg-type]
    assert caplog.text.count("does not fit") == 1 and pika.__version__ in caplog.text
    shim.cancel(tag, lambda *_args: None)
    assert [m.nowait for m in connection.sent if isinstance(m, spec.Basic.Cancel)] == [True]
    connection.deliver(channel, tag, 2)
    assert connection.rejected() == [2] and shim.unanswered == 0


def test_a_subscription_gone_already_is_not_waited_for():
    from taskqueue.broker.cancels import Cancels
    connection, channel = opened()
    cancels = Cancels.of(channel, LOG)
    cancels.cancel("ctag-gone", lambda *_args: None)  # (pika would only warn: no cancel sent)
    assert cancels.unanswered == 0 and not any(
        isinstance(m, spec.Basic.Cancel) for m in connection.sent)
