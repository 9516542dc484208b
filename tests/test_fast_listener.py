"""The control listener (control/listener.py) without a broker: which refusal is final, and
reading again (after a reconnect, after the broker's cancel, from a stream made again)."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pika.exceptions
import pytest

from taskqueue.broker.config import QueueSpec
from taskqueue.control import listener
from taskqueue.control.state import ControlState, command

NO_REPLICA = ("PRECONDITION_FAILED - stream queue 'q.control' in vhost '/' does not have a "
              "running replica on the local node")
# RabbitMQ 3.10's words for the same (seen with three workers starting on a new queue: the
# one that lost the race worked on without pause, cancel and stop-workers, and did not stop).
NO_REPLICA_3_10 = ("PRECONDITION_FAILED - queue 'queue 'q.control' in vhost '/'' does not have "
                   "a replica on the local node")
NO_STREAMS = "PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue 'q.control'"


def refused_once(monkeypatch: pytest.MonkeyPatch, text: str) -> tuple[listener.WorkerControl,
                                                                     list, list]:
    """A listener whose first declaration of the control stream is refused with 406 *text*;
    (listener, retries scheduled, caught-up calls)."""
    refusals = [pika.exceptions.ChannelClosedByBroker(406, text)]

    def declare(_connection, _spec, on_done, on_error) -> None:
        if refusals:
            on_error(refusals.pop())

    monkeypatch.setattr(listener, "declare_control", declare)
    control = listener.WorkerControl(QueueSpec("q"), ControlState("w", 0.0), logging.getLogger("t"),
                                     on_command=lambda *_a: None, answer=lambda *_a: None)
    retries, caught_up = [], []
    ioloop = SimpleNamespace(call_later=lambda delay, callback: retries.append(callback))
    control.start(SimpleNamespace(is_open=True), ioloop, lambda: caught_up.append(True))
    return control, retries, caught_up


@pytest.mark.parametrize("text", [NO_REPLICA, NO_REPLICA_3_10, "PRECONDITION_FAILED - words "
                                  "of a later version"], ids=["4.x", "3.10", "unknown"])
def test_a_stream_with_no_replica_on_our_node_yet_is_tried_again(monkeypatch, text):
    """Found at 1,000 workers (bench/scale.md): workers starting at once on new names got this
    406 and worked without pause, cancel and stop for good."""
    control, retries, caught_up = refused_once(monkeypatch, text)
    assert control.available and retries and not caught_up, "waits and tries again"


def test_a_broker_without_streams_is_final(monkeypatch):
    control, retries, caught_up = refused_once(monkeypatch, NO_STREAMS)
    assert not control.available and caught_up == [True] and not retries


# --- reading again: after a reconnect, after the broker's cancel, from a stream made again ----
class FakeChannel:
    """Enough of a pika channel for the listener: it records the consume, and the test
    delivers commands (``deliver``) or the broker's cancel (``cancel``) to it."""

    def __init__(self, refusal: Exception | None = None) -> None:
        self.is_open = True
        self.on_message = self.on_cancel = self.on_close = None
        self.arguments: dict = {}
        self.refusal = refusal

    def add_on_close_callback(self, callback) -> None:
        self.on_close = callback

    def add_on_cancel_callback(self, callback) -> None:
        self.on_cancel = callback

    def basic_qos(self, prefetch_count: int, callback) -> None:
        callback(None)

    def basic_consume(self, _queue: str, on_message, arguments: dict, callback=None) -> None:
        self.on_message, self.arguments = on_message, arguments
        if self.refusal is not None:  # the broker closes the channel instead of a consume-ok
            self.is_open = False
            self.on_close(self, self.refusal)
        elif callback is not None:
            callback(None)  # the broker's consume-ok

    def basic_ack(self, _tag: int) -> None:
        pass

    def close(self) -> None:
        self.is_open = False

    def deliver(self, records: list[dict], first_offset: int = 0) -> None:
        for offset, record in enumerate(records, first_offset):
            self.on_message(self, SimpleNamespace(delivery_tag=offset + 1),
                            pika.BasicProperties(headers={"x-stream-offset": offset}),
                            json.dumps(record).encode())

    def cancel(self) -> None:
        self.on_cancel(SimpleNamespace())


class FakeConnection:
    is_open = True

    def __init__(self) -> None:
        self.channels: list[FakeChannel] = []
        self.refusal: Exception | None = None  # each consume is refused with it, while set

    def channel(self, on_open_callback) -> None:
        self.channels.append(FakeChannel(self.refusal))
        on_open_callback(self.channels[-1])


def reading(monkeypatch: pytest.MonkeyPatch, started: float = 0.0):
    """A listener on a fake connection: (listener, connection, ioloop's pending calls, actions
    taken, answers given)."""
    monkeypatch.setattr(listener, "declare_control",
                        lambda _connection, _spec, on_done, _on_error: on_done())
    actions: list[str] = []
    answers: list[str] = []
    control = listener.WorkerControl(QueueSpec("q"), ControlState("w", started),
                                     logging.getLogger("t"),
                                     on_command=lambda action, _record: actions.append(action),
                                     answer=lambda record, _what: answers.append(record["id"]))
    return control, FakeConnection(), [], actions, answers


def test_a_reconnect_reads_from_the_start_and_acts_on_each_command_once(monkeypatch):
    """A pause then a resume, read again after a reconnect, must not resume (or pause) again:
    each command is known by its id."""
    control, connection, _pending, actions, answers = reading(monkeypatch)
    history = [command("pause"), command("resume"), command("pause")]
    control.start(connection, SimpleNamespace(call_later=lambda *_a: None,
                                              remove_timeout=lambda _t: None), lambda: None)
    connection.channels[-1].deliver(history)
    assert actions == ["pause", "resume", "pause"] and control.paused
    control.stop()
    control.start(connection, SimpleNamespace(call_later=lambda *_a: None,
                                              remove_timeout=lambda _t: None), lambda: None)
    assert connection.channels[-1].arguments == {"x-stream-offset": "first"}
    connection.channels[-1].deliver([*history, command("resume")])
    assert actions == ["pause", "resume", "pause", "resume"], "only the new one acts"
    assert len(answers) == 4 and not control.paused


def test_a_stream_made_again_is_read_from_its_first_command(monkeypatch):
    """Deleted and made again while the worker was away: the new stream's offsets start at 0
    again. A reader that went on from its old offset skipped the stop at offset 0."""
    control, connection, _pending, actions, _answers = reading(monkeypatch)
    loop = SimpleNamespace(call_later=lambda *_a: None, remove_timeout=lambda _t: None)
    control.start(connection, loop, lambda: None)
    connection.channels[-1].deliver([command("pause"), command("resume"), command("pause"),
                                     command("resume")])
    control.stop()
    control.start(connection, loop, lambda: None)
    connection.channels[-1].deliver([command("stop")], first_offset=0)
    assert actions[-1] == "stop"


def test_the_brokers_cancel_is_said_and_the_stream_read_again(monkeypatch, caplog):
    """The broker cancels a stream's readers when it is deleted (or its member goes away): the
    worker says so and reads it again; a stop given to the stream made again is heard."""
    control, connection, pending, actions, _answers = reading(monkeypatch)
    loop = SimpleNamespace(call_later=lambda _delay, callback: pending.append(callback),
                           remove_timeout=lambda _t: None)
    control.start(connection, loop, lambda: None)
    first = connection.channels[-1]
    first.deliver([command("pause")])
    with caplog.at_level(logging.WARNING):
        first.cancel()
    assert not first.is_open, "the cancelled reading's channel is closed"
    assert "ended our reading of the control stream 'q.control'" in caplog.text
    for call in list(pending):  # the quiet timers, and the reading again after a moment
        call()
    assert len(connection.channels) == 2, "read again, on a channel of its own"
    connection.channels[-1].deliver([command("stop")])
    assert actions == ["pause", "stop"]


def test_a_cancel_of_a_reading_of_the_past_changes_nothing(monkeypatch):
    """The connection was lost meanwhile (a newer reading exists): the old one's cancel is
    ignored."""
    control, connection, pending, _actions, _answers = reading(monkeypatch)
    loop = SimpleNamespace(call_later=lambda _delay, callback: pending.append(callback),
                           remove_timeout=lambda _t: None)
    control.start(connection, loop, lambda: None)
    old = connection.channels[-1]
    control.stop()
    control.start(connection, loop, lambda: None)
    pending.clear()
    old.cancel()
    assert not pending and len(connection.channels) == 2


class FakeLoop:
    """call_later and remove_timeout on a clock the test moves (``run_until``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, int, object]] = []
        self._count = 0
        monkeypatch.setattr(listener.time, "monotonic", lambda: self.now)

    def call_later(self, delay: float, callback) -> int:
        self._count += 1
        self.timers.append((self.now + delay, self._count, callback))
        return self._count

    def remove_timeout(self, timer: int) -> None:
        self.timers = [entry for entry in self.timers if entry[1] != timer]

    def run_until(self, until: float) -> None:
        while self.timers and min(self.timers)[0] <= until:
            entry = min(self.timers)
            self.timers.remove(entry)
            self.now = entry[0]
            entry[2]()
        self.now = until


def test_a_consume_refused_after_the_declare_is_waited_for_then_worked_around(monkeypatch,
                                                                              caplog):
    """The stream exists (the declare passes) but refuses the consume: no replica running on
    our node yet (3.10's words). Before: the declare's success reset the wait, so it was said
    again every second and never given up; and the refused reading's quiet moment counted as
    caught up, so tasks were taken before any command was read."""
    control, connection, _pending, _actions, _answers = reading(monkeypatch)
    loop = FakeLoop(monkeypatch)
    connection.refusal = pika.exceptions.ChannelClosedByBroker(406, NO_REPLICA_3_10)
    caught_up: list[float] = []
    with caplog.at_level(logging.INFO):
        control.start(connection, loop, lambda: caught_up.append(loop.now))
        loop.run_until(10.0)
        assert caught_up == [], "no command read, so not caught up: tasks wait"
        assert caplog.text.count("cannot be read yet") == 1, "said once, not at every try"
        loop.run_until(listener.WAIT_SECONDS + 2)
        assert caught_up and caught_up[0] > listener.WAIT_SECONDS, "then works meanwhile"
        assert "still unreadable after" in caplog.text
        tries = len(connection.channels)
        loop.run_until(listener.WAIT_SECONDS + 2 + 10 * listener.LATER_RETRY_SECONDS)
        assert 8 <= len(connection.channels) - tries <= 11, "tried again, less often"
        connection.refusal = None  # its replica is up
        loop.run_until(loop.now + listener.LATER_RETRY_SECONDS + 1)
        connection.channels[-1].deliver([command("pause")])
    assert control.paused and "is readable again" in caplog.text
    assert len(caught_up) == 1


def test_a_reading_closed_by_the_broker_after_catching_up_is_tried_again(monkeypatch):
    """Reading, caught up, working: then the broker closes the reading's channel (its node
    restarting, the stream moved): read again, and hear the next command."""
    control, connection, _pending, actions, _answers = reading(monkeypatch)
    loop = FakeLoop(monkeypatch)
    caught_up: list[float] = []
    control.start(connection, loop, lambda: caught_up.append(loop.now))
    loop.run_until(1.0)
    assert caught_up == [0.5]
    first = connection.channels[-1]
    first.is_open = False
    first.on_close(first, pika.exceptions.ChannelClosedByBroker(
        541, "INTERNAL_ERROR - stream member restarting"))
    loop.run_until(3.0)
    assert len(connection.channels) == 2, "read again"
    connection.channels[-1].deliver([command("stop")])
    assert actions == ["stop"] and caught_up == [0.5]
