"""Counting the tasks a rate limit parked (control/commands.py ``parked``, status's line) and
the queues' depths (views/store.py), without a broker: a fake connection whose passive
declares answer as RabbitMQ does, and which remembers every channel opened and closed.

Before: ``parked`` opened a channel per tier and never closed one (a view reading every
second would pile them up), and ``passive_counts`` took any refusal for "no such queue": a
tier held by a node that is down, or not ours to read, was shown as absent."""

from __future__ import annotations

from types import SimpleNamespace

import pika
import pytest

from taskqueue.broker.config import QueueSpec
from taskqueue.control import commands
from taskqueue.control.state import ControlState
from taskqueue.views import store

pytestmark = pytest.mark.fast

UNAVAILABLE = ("NOT_FOUND - home node 'rabbit@b' of durable queue 'jobs.wait.16s' in vhost '/' "
               "is down or inaccessible")


class Channel:
    def __init__(self, broker: Broker) -> None:
        self.broker, self.open = broker, True

    def queue_declare(self, name: str, passive: bool = False, **_kwargs) -> SimpleNamespace:
        assert passive, "only looking"
        answer = self.broker.queues.get(name)
        if isinstance(answer, tuple):  # (code, text): the broker closes the channel
            self.open = False
            raise pika.exceptions.ChannelClosedByBroker(*answer)
        if answer is None:
            self.open = False
            raise pika.exceptions.ChannelClosedByBroker(404, f"NOT_FOUND - no queue '{name}'")
        return SimpleNamespace(method=SimpleNamespace(message_count=answer, consumer_count=0))

    def close(self) -> None:
        self.open = False


class Broker:
    """A connection: queue name -> messages, or (code, text) for a refusal."""

    def __init__(self, queues: dict[str, int | tuple[int, str]]) -> None:
        self.queues = queues
        self.channels: list[Channel] = []

    def channel(self) -> Channel:
        self.channels.append(Channel(self))
        return self.channels[-1]

    def close(self) -> None: ...

    @property
    def left_open(self) -> int:
        return sum(channel.open for channel in self.channels)


SPEC = QueueSpec("jobs")


def test_parked_closes_every_channel_it_opens():
    broker = Broker({"jobs.wait.1s": 3, "jobs.wait.4s": 0, "jobs.wait.64s": 2})
    counted = commands.parked(broker, SPEC)
    assert len(broker.channels) == len(SPEC.wait_names)
    assert broker.left_open == 0, "a channel per tier left open"
    assert counted is not None and counted.tasks == 5


def test_parked_is_none_without_tiers_and_names_a_tier_it_could_not_count():
    assert commands.parked(Broker({}), SPEC) is None, "no limit ever given"
    broker = Broker({"jobs.wait.1s": 3, "jobs.wait.16s": (404, UNAVAILABLE),
                     "jobs.wait.64s": (403, "ACCESS_REFUSED - access to queue denied")})
    counted = commands.parked(broker, SPEC)  # before: the 403 ended status with a traceback
    assert counted is not None and counted.tasks == 3
    assert set(counted.uncounted) == {"jobs.wait.16s", "jobs.wait.64s"}, \
        "a tier whose node is down is not an absent tier"
    line = commands.rate_line(ControlState("t", 0.0), counted)
    assert line.startswith("no rate limit; 3 tasks parked (not counted: jobs.wait.16s: "), line
    assert broker.left_open == 0


def test_the_queue_status_tells_a_refused_queue_from_an_absent_one(monkeypatch):
    broker = Broker({"jobs": 7, "jobs.retry": (404, UNAVAILABLE),
                     "jobs.dead": (403, "ACCESS_REFUSED - access to queue denied")})
    monkeypatch.setattr(store, "open_blocking", lambda _settings: broker)
    lines = {line.split()[0]: line for line in store.queue_status(None, SPEC).splitlines()[1:]}
    assert lines["jobs"].split()[1:] == ["7", "0"]
    assert "(none)" not in lines["jobs.retry"] and "home node" in lines["jobs.retry"]
    assert "(none)" not in lines["jobs.dead"] and "ACCESS_REFUSED" in lines["jobs.dead"]
    assert lines["jobs.urgent"].split()[1:] == ["(none)"]
    assert store.passive_counts(broker, ["jobs", "jobs.dead", "jobs.urgent"]) == {
        "jobs": (7, 0), "jobs.dead": None, "jobs.urgent": None}, "the views: unknown"
    assert broker.left_open == 0
