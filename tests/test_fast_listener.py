"""The control listener (control/listener.py) on a refusal: which 406 is final. No broker."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pika.exceptions
import pytest

from taskqueue.broker.config import QueueSpec
from taskqueue.control import listener
from taskqueue.control.state import ControlState

NO_REPLICA = ("PRECONDITION_FAILED - stream queue 'q.control' in vhost '/' does not have a "
              "running replica on the local node")
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


def test_a_stream_with_no_replica_on_our_node_yet_is_tried_again(monkeypatch):
    """Found at 1,000 workers (bench/scale.md): workers starting at once on new names got this
    406 and worked without pause, cancel and stop for good."""
    control, retries, caught_up = refused_once(monkeypatch, NO_REPLICA)
    assert control.available and retries and not caught_up, "waits and tries again"


def test_a_broker_without_streams_is_final(monkeypatch):
    control, retries, caught_up = refused_once(monkeypatch, NO_STREAMS)
    assert not control.available and caught_up == [True] and not retries
