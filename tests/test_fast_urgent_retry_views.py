"""``<queue>.urgent.retry`` in what the views count and say, and the stop's one line about the
give-back copies it did not see confirmed, without a broker (fakes from the tests beside).

* ``task_report.py --status`` lists ``<queue>.urgent.retry`` (``(none)`` before a worker made
  it); ``--watch``'s line counts it in "retrying" (the dashboard's feed: test_fast_web_feed.py).
  Before: neither named it, so an urgent task waiting for its retry was in no figure.
* ``GiveBack.unconfirmed_back``: an original whose channel is closed is not nacked (the broker
  has it back): before, the line counted it among those going back "with a nack".
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.views import store, watch
from tests.test_fast_give_back import Channel, held, intake
from tests.test_fast_parked_count import Broker

pytestmark = pytest.mark.fast

SPEC = QueueSpec("jobs")


def test_the_status_lists_the_urgent_retry_queue(monkeypatch):
    for depth, shown in ((None, ["(none)"]), (4, ["4", "0"])):
        queues = {"jobs": 7, "jobs.retry": 1, "jobs.dead": 0, "jobs.urgent": 0}
        if depth is not None:
            queues["jobs.urgent.retry"] = depth
        broker = Broker(queues)  # type: ignore[arg-type]
        monkeypatch.setattr(store, "open_blocking", lambda _settings, b=broker: b)
        lines = {line.split()[0]: line for line in store.queue_status(None, SPEC).splitlines()[1:]}
        assert lines["jobs.urgent.retry"].split()[1:] == shown, lines
        assert broker.left_open == 0


class WatchedBroker(Broker):
    """Broker, as ``watch`` uses its connection: one refresh, then Ctrl+C."""

    def __init__(self, queues: dict) -> None:
        super().__init__(queues)
        self.is_open = False
        self.passive: list[str] = []

    def channel(self):  # type: ignore[override]
        channel = super().channel()
        own = channel.queue_declare

        def queue_declare(name: str, passive: bool = False, **kwargs):
            if not passive:  # the view's own queue
                return None
            self.passive.append(name)
            return own(name, passive=True, **kwargs)

        channel.queue_declare = queue_declare  # type: ignore[method-assign]
        for step in ("exchange_declare", "queue_bind", "basic_consume"):
            setattr(channel, step, lambda *_a, **_k: None)
        return channel

    def process_data_events(self, time_limit: float = 0) -> None:
        raise KeyboardInterrupt


def watched(monkeypatch, queues: dict) -> tuple[str, WatchedBroker]:
    broker = WatchedBroker(queues)
    monkeypatch.setattr(watch, "open_blocking", lambda _settings: broker)
    monkeypatch.setattr(watch, "follow_results", lambda *_args: False)
    monkeypatch.setattr(watch, "_stop_on_sigterm", lambda: None)
    out = io.StringIO()
    watch.watch(BrokerSettings(["amqp://fake"]), SPEC, stream=out)
    return out.getvalue(), broker


def test_the_watch_line_counts_the_urgent_retry_queue_as_retrying(monkeypatch):
    line, _broker = watched(monkeypatch, {"jobs": 2, "jobs.retry": 3, "jobs.dead": 0,
                                          "jobs.urgent.retry": 4})
    assert "retrying 7" in line, line


def test_the_watch_line_counts_an_absent_urgent_retry_queue_as_zero(monkeypatch):
    line, broker = watched(monkeypatch, {"jobs": 2, "jobs.retry": 3, "jobs.dead": 0})
    assert "retrying 3" in line, line
    assert broker.passive.count("jobs.urgent.retry") == 1


def test_a_refused_urgent_retry_queue_makes_retrying_unknown(monkeypatch):
    line, _broker = watched(monkeypatch, {
        "jobs": 2, "jobs.retry": 3, "jobs.dead": 0,
        "jobs.urgent.retry": (403, "ACCESS_REFUSED - access to queue denied")})
    assert "retrying ?" in line and "retrying 3" not in line, line


def test_unconfirmed_back_says_apart_the_originals_whose_channel_is_closed():
    taking, outbox, channel = intake()
    closed = Channel()
    taking.lanes.hold(held(channel, 1), urgent=True)
    taking.lanes.hold(held(closed, 2), urgent=False)
    taking.lanes.hold(held(closed, 3), urgent=False)
    assert taking.cancel(None) == 3 and len(outbox.copies) == 3
    outbox.blocked = True
    closed.is_open = False
    said: list[str] = []
    outbox.log = SimpleNamespace(warning=lambda text, *args: said.append(text % args))
    assert taking.giving_back is not None
    assert taking.giving_back.unconfirmed_back() == 1, "one nacked"
    assert channel.nacked == [(1, True)] and closed.nacked == []
    [line] = said
    assert "copies of 1 task(s) given back" in line, line
    assert line.endswith("; and 2 whose channel was closed: not nacked, the broker has them "
                         "back"), line


def test_unconfirmed_back_with_every_channel_closed_says_none_was_nacked():
    taking, outbox, channel = intake()
    taking.lanes.hold(held(channel, 1), urgent=True)
    assert taking.cancel(None) == 1
    outbox.blocked, channel.is_open = True, False
    said: list[str] = []
    outbox.log = SimpleNamespace(warning=lambda text, *args: said.append(text % args))
    assert taking.giving_back is not None
    assert taking.giving_back.unconfirmed_back() == 0
    assert channel.nacked == [] and len(said) == 1 and "with a nack" not in said[0], said


