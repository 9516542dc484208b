"""The dashboard's broker reader (web/feed.py) without a broker: how often its loop reads the
queue depths and looks for the results stream, when pika's ``process_data_events`` returns at
once (as it does after any event it dispatched, or after a 404 closed a channel), how seldom
it looks for a rate limit's tiers on a queue that has none, and ``<queue>.urgent.retry`` in the
"retrying" count (looked for as seldom while it does not exist).

Found by a benchmark: on a queue not declared yet, the idle server used 28% of a core."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pika
import pytest

from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.web import feed as feed_module
from taskqueue.web.copies import RunCopies
from taskqueue.web.feed import DashboardFeed
from taskqueue.web.place import StreamPlace, Verdict

pytestmark = pytest.mark.fast

TICK_MS = 10  # what each process_data_events call takes: an event every 10 ms


class Broker:
    """A fake connection and its channels: every ``process_data_events`` returns after one
    tick; the results stream exists from ``stream_at_ms`` on."""

    def __init__(self, feed: DashboardFeed, calls: int, stream_at_ms: int | None) -> None:
        self.feed, self.calls_left, self.stream_at_ms = feed, calls, stream_at_ms
        self.now_ms = 0
        self.processed = 0
        self.probes: list[int] = []  # when the results stream was looked for (ms)
        self.followed_at: int | None = None  # when it was consumed
        self.tier_looks: list[int] = []  # when a rate limit's tier was looked for (ms)
        self.urgent_retry: int | None = None  # q.urgent.retry's depth; None: not made
        self.urgent_retry_looks: list[int] = []  # when it was looked for (ms)

    def clock(self) -> float:
        return self.now_ms / 1000

    def channel(self) -> Broker:
        return self

    def process_data_events(self, time_limit: float | None = 0) -> None:
        self.now_ms += TICK_MS
        self.processed += 1
        if self.processed >= self.calls_left:
            self.feed._stopping.set()

    def queue_declare(self, name: str, passive: bool = False, **_kwargs) -> object:
        if name.endswith(".urgent.retry"):  # made by a worker that consumed q.urgent
            self.urgent_retry_looks.append(self.now_ms)
            if self.urgent_retry is None:
                raise pika.exceptions.ChannelClosedByBroker(404, "NOT_FOUND")
            return SimpleNamespace(method=SimpleNamespace(message_count=self.urgent_retry,
                                                          consumer_count=0))
        if ".wait." in name:  # a rate limit's tier: none made (no limit ever given)
            self.tier_looks.append(self.now_ms)
            raise pika.exceptions.ChannelClosedByBroker(404, "NOT_FOUND")
        if name.endswith(".results"):
            self.probes.append(self.now_ms)
            if self.stream_at_ms is None or self.now_ms < self.stream_at_ms:
                raise pika.exceptions.ChannelClosedByBroker(404, "NOT_FOUND")
        return None

    def basic_consume(self, queue: str, *_args, **_kwargs) -> None:
        if queue.endswith(".results"):
            self.followed_at = self.now_ms

    def exchange_declare(self, *_args, **_kwargs) -> None: ...
    def queue_bind(self, *_args, **_kwargs) -> None: ...
    def basic_qos(self, *_args, **_kwargs) -> None: ...
    def add_on_cancel_callback(self, *_args, **_kwargs) -> None: ...
    def close(self) -> None: ...


def follow(tmp_path: Path, monkeypatch, calls: int, stream_at_ms: int | None = None,
           urgent_retry: int | None = None, retry: int | None = None
           ) -> tuple[Broker, list[int]]:
    """Run the feed's loop on the fake for *calls* process calls; the times (ms) the queue
    depths were read. *retry*: q.retry's depth (None: none of the queues declared yet)."""
    feed = DashboardFeed(BrokerSettings(["amqp://fake"]), QueueSpec("q"),
                         logging.getLogger("test"), RunCopies(tmp_path, "q"), interval=1.0)
    broker = Broker(feed, calls, stream_at_ms)
    broker.urgent_retry = urgent_retry
    feed.clock = broker.clock
    depths: list[int] = []

    def passive_counts(_connection, names):
        depths.append(broker.now_ms)
        counts: dict[str, tuple[int, int] | None] = dict.fromkeys(names)
        if retry is not None:
            counts.update({"q": (0, 1), "q.retry": (retry, 0), "q.dead": (0, 0)})
        return counts

    monkeypatch.setattr(feed_module, "passive_counts", passive_counts)
    feed._follow(broker, "amqp://fake")  # type: ignore[arg-type]
    return broker, depths


def test_depths_are_read_once_an_interval_however_often_events_come(tmp_path, monkeypatch):
    """300 events in 3 s: the depths read 3 or 4 times (once a second), not 300 times."""
    broker, depths = follow(tmp_path, monkeypatch, calls=300)
    assert broker.now_ms == 3000
    assert len(depths) <= 4, f"depths read {len(depths)} times in 3 s"
    assert all(b - a >= 1000 for a, b in zip(depths, depths[1:]))


def test_a_missing_results_stream_is_looked_for_every_two_seconds(tmp_path, monkeypatch):
    broker, _depths = follow(tmp_path, monkeypatch, calls=500)  # 5 s
    assert broker.probes[0] == 0 and len(broker.probes) <= 3, broker.probes
    assert all(b - a >= 2000 for a, b in zip(broker.probes, broker.probes[1:]))
    assert broker.followed_at is None


def test_a_results_stream_made_later_is_followed_within_two_seconds(tmp_path, monkeypatch):
    broker, _depths = follow(tmp_path, monkeypatch, calls=600, stream_at_ms=2500)
    assert broker.followed_at is not None and 2500 <= broker.followed_at <= 4500
    assert broker.probes[-1] == broker.followed_at, "not looked for once followed"


def test_the_rate_limits_tiers_are_looked_for_seldom_while_there_are_none(tmp_path, monkeypatch):
    """No tier, no limit heard of: each look at the 8 tiers costs 8 channels closed by a 404,
    so they are looked for every PROBE_SECONDS (10 s), not once a second."""
    broker, depths = follow(tmp_path, monkeypatch, calls=1500)  # 15 s
    assert len(depths) >= 14
    looks = sorted(set(broker.tier_looks))
    assert looks[0] == 0 and len(looks) == 2 and looks[1] - looks[0] >= 10_000, looks
    assert len(broker.tier_looks) == 2 * len(QueueSpec("q").wait_names)


def test_retrying_counts_the_urgent_retry_queue_too(tmp_path, monkeypatch):
    """``<queue>.urgent.retry`` (a failed urgent task's retry) is in "retrying", /metrics's
    ``retrying`` gauge and the pages' figure, beside ``<queue>.retry``; read every beat once
    it exists."""
    broker, depths = follow(tmp_path, monkeypatch, calls=300, urgent_retry=4, retry=3)
    assert broker.feed.state.counts.retry == 7
    assert len(broker.urgent_retry_looks) == len(depths)


def test_an_absent_urgent_retry_queue_counts_zero_and_is_looked_for_seldom(tmp_path,
                                                                          monkeypatch):
    """Not made yet (no worker consumed ``<queue>.urgent``): 0, and each look costs a channel
    closed by a 404, so it is looked for every PROBE_SECONDS (10 s), as the tiers are."""
    broker, depths = follow(tmp_path, monkeypatch, calls=1500, retry=3)  # 15 s
    assert broker.feed.state.counts.retry == 3
    assert len(depths) >= 14 and broker.urgent_retry_looks == [0, 10_000], \
        broker.urgent_retry_looks


def test_a_reading_resumed_tells_the_same_stream_from_one_made_again():
    """The last message read is read again on a resume: the same body at that offset reads
    on; another body there, or a lower offset, is a stream made anew (its figures start over);
    a higher one (retention removed it meanwhile) reads on (web/place.py)."""
    place = StreamPlace()
    assert place.start() == "first"
    assert [place.read(n, b"m%d" % n) for n in range(3)] == [Verdict.NEW] * 3
    assert place.next_offset == 3 and place.start() == 2
    assert place.read(2, b"m2") is Verdict.SEEN and place.read(3, b"m3") is Verdict.NEW
    assert place.start() == 3 and place.read(3, b"another") is Verdict.OTHER
    assert place.start() == 3 and place.read(1, b"m1") is Verdict.OTHER
    assert place.start() == 3 and place.read(9, b"m9") is Verdict.NEW and place.next_offset == 10
