"""The dashboard's one broker reader: a thread with one connection, however many tabs.

It does what ``task_report.py --watch`` does (watch.py), for everyone at once: a queue of its
own bound to the ``<queue>.events`` exchange (the workers' snapshots), the results stream read
from its first record and then followed (totals, runs, the live run, and each run's copy for
the run pages: copies.py), and once a second the queue's counts by passive declares (the
tasks a rate limit parked too: views/live_parked.py; nothing published: it keeps working during an
alarm). The web handlers read ``view()`` under the lock; they never touch the broker for the
live page.

A lost connection is one log line and a new connection two seconds later, reading the stream
on from the last record read, so nothing is counted twice or missed (that record is read again
to tell that the stream is still the one read: place.py). When the broker ends the reading
(basic.cancel: the stream was deleted, or its node went away), or the stream turns out deleted
or made anew, that is one log line and the figures start over from the stream's first record,
as at a start: a deleted stream's records are gone, and a new one numbers its records from 0.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace

import pika
from pika.adapters.blocking_connection import BlockingChannel

from taskqueue.broker.blocking import open_blocking_at
from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.errors import UserError
from taskqueue.views.live import QueueCounts
from taskqueue.views.live_parked import TierWatch
from taskqueue.views.live_retry import UrgentRetryWatch, retrying
from taskqueue.views.store import passive_counts
from taskqueue.views.watch import VIEW_QUEUE_LIMIT
from taskqueue.web.copies import RunCopies
from taskqueue.web.nodes import NodeWatch
from taskqueue.web.place import StreamPlace, Verdict
from taskqueue.web.snapshot import FeedState
from taskqueue.web.totals import RecordTotals
from taskqueue.wire.events import decode_events
from taskqueue.wire.record import decode_group, kind_of

GONE_AFTER = 4.0  # two snapshot intervals (2 s): a killed worker shows as gone
RECONNECT_SECONDS = 2.0
PREFETCH = 100  # stream messages (groups of records) in flight: memory while catching up
FORGET_AFTER = 600.0  # a worker not heard from this long leaves the page (and /metrics)
# A results stream not there yet (no worker started) is looked for this often: each look
# opens a channel the broker closes with a 404.
RESULTS_PROBE_SECONDS = 2.0


class DashboardFeed:
    """Keeps ``state`` (the live view's LiveState) and ``totals`` (RecordTotals) up to date
    from the broker, in a thread of its own, until ``stop()``."""

    def __init__(self, settings: BrokerSettings, spec: QueueSpec, log: logging.Logger,
                 copies: RunCopies, interval: float = 1.0) -> None:
        self.settings, self.spec, self.log, self.interval = settings, spec, log, interval
        self.copies = copies
        self.totals = RecordTotals()
        self.state = FeedState(spec.name, gone_after=GONE_AFTER, totals=self.totals)
        self.lock = threading.Lock()
        self.connected = False
        self.problem: str | None = None  # why the feed is not connected, for the page
        # When the broker last answered (its queue counts read): while it does not, the page
        # shows the figures of that moment, as of that moment (hub.py), rather than as current.
        self.heard_at: float | None = None
        self.bad_records = 0  # records that could not be read (skipped, logged)
        self.place = StreamPlace()  # the last record read (its offset): where to read on
        self._results: BlockingChannel | None = None  # the channel reading the stream now
        self._afresh = False  # the stream read is gone: start over (said where it was found)
        self._urls = list(settings.urls)  # tried in this order; a node found behind goes last
        self.tiers = TierWatch(spec)  # the tasks a rate limit parked
        self.urgent_retry = UrgentRetryWatch(spec)  # "retrying" counts it beside <queue>.retry
        self.nodes = NodeWatch(settings, spec, log, lambda: self.place.next_offset)
        self._stopping = threading.Event()
        self.clock: Callable[[], float] = time.monotonic  # the loop's beat (a test's own clock)
        self._thread = threading.Thread(target=self._run, name="dashboard-feed", daemon=True)

    def start(self) -> None:
        self.copies.start()
        self._thread.start()
        self.nodes.start()

    def stop(self) -> None:
        self._stopping.set()
        self.nodes.stop()
        self._thread.join(timeout=10)
        self.copies.close()

    def latest_run(self) -> str:
        """The newest run going on (the live page's first card), else the newest recorded."""
        with self.lock:
            runs = self.totals.live_runs(time.time())
            return runs[0]["run"] if runs else ""

    def seen(self, run_id: str) -> int:
        with self.lock:
            return self.totals.seen(run_id)

    # --- the thread ------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self._thread.is_alive() or not self._thread.ident  # not started is not dead

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, url = open_blocking_at(replace(self.settings, urls=self._urls))
            except UserError as exc:  # unreachable, refused: said on the page and in the log
                self._lost(str(exc))
                continue
            except Exception as exc:  # whatever it is, the page says so and we try again
                self._lost(f"cannot connect to the broker ({exc!r})")
                continue
            try:
                self.nodes.watching(url)
                self._follow(connection, url)
            except (pika.exceptions.AMQPError, OSError) as exc:
                self._lost(f"connection to the broker lost ({exc!r})")
            except Exception as exc:  # a bug must not end the page's updates silently
                self.log.exception("dashboard: the broker reader failed")
                self._lost(f"the broker reader failed ({exc!r})")
            finally:
                with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                    if connection.is_open:
                        connection.close()
                self.connected = False
                self._take_advice(url)  # a node that fails us may be behind as well

    def _take_advice(self, url: str) -> bool:
        """True when NodeWatch found the node at *url* behind: said, and it goes last."""
        advice = self.nodes.advice(url)
        if advice is None:
            return False
        better, why = advice
        self.log.warning("dashboard: %s; reading from the second", why)
        self._urls = [better, *(u for u in self._urls if u not in (better, url)), url]
        return True

    def _lost(self, why: str) -> None:
        if why != self.problem:
            self.log.warning("dashboard: %s; trying again every %.0f s", why, RECONNECT_SECONDS)
        self.problem, self.connected = why, False
        self._stopping.wait(RECONNECT_SECONDS)

    def _follow(self, connection: pika.BlockingConnection, url: str) -> None:
        """Until stopped, or told that the node at *url* is behind (then the caller connects
        again, there last: reading on from the next offset, nothing twice)."""
        channel = connection.channel()
        channel.exchange_declare(self.spec.exchange, "topic", durable=True)
        view = f"{self.spec.name}.watch.web-{uuid.uuid4().hex[:8]}"
        channel.queue_declare(view, exclusive=True, auto_delete=True,
                              arguments={"x-max-length": VIEW_QUEUE_LIMIT})
        channel.queue_bind(view, self.spec.exchange, "#")
        channel.basic_consume(view, self._on_live, auto_ack=True)
        following = self._follow_results(connection)
        if self.problem:
            self.log.info("dashboard: connected to the broker again")
        self.connected, self.problem = True, None
        names = [self.spec.name, self.spec.retry_name, self.spec.dead_name]
        probe_at = self.clock() + RESULTS_PROBE_SECONDS
        while not self._stopping.is_set():
            if self._take_advice(url):
                return
            if self._afresh:
                # On a new connection: closing a reading with messages in hand would nack
                # them, which a stream answers by closing the connection anyway.
                self._start_afresh()
                return
            if not following and self.clock() >= probe_at:
                following = self._follow_results(connection)
                probe_at = self.clock() + RESULTS_PROBE_SECONDS
            counts = passive_counts(connection, names)
            task, retry, dead = (counts[name] for name in names)
            retries = retrying(retry, self.urgent_retry.read(connection, self.clock()))
            with self.lock:
                limited = bool(self.state.rate_line(time.time()))
            parked = self.tiers.read(connection, self.clock(), limited)
            with self.lock:
                self.state.counts = QueueCounts(task and task[0], retries,
                                                dead and dead[0], task and task[1])
                self.state.parked = parked
                self.state.forget(time.time(), FORGET_AFTER)
                self.heard_at = time.time()
            self._process_until(connection, self.clock() + self.interval)

    def _process_until(self, connection: pika.BlockingConnection, deadline: float) -> None:
        """The broker's deliveries until *deadline*. One ``process_data_events`` is not
        enough: it returns as soon as it has dispatched anything (a live event, a group of
        records, or the channel a 404 closed), so the loop above read the queue depths again
        after every event, and on a queue not declared yet spun at a quarter of a core."""
        while not self._stopping.is_set() and not self._afresh:
            left = deadline - self.clock()
            if left <= 0:
                return
            connection.process_data_events(time_limit=left)

    def _follow_results(self, connection: pika.BlockingConnection) -> bool:
        """Read the results stream from where we left it (its start, the first time); False
        while there is none yet (the first worker makes it)."""
        probe = connection.channel()
        try:
            probe.queue_declare(self.spec.results_name, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404 and self.place.last is not None:  # deleted meanwhile
                self.log.warning("dashboard: the results stream %r is gone (deleted): its "
                                 "figures start over", self.spec.results_name)
                self._start_afresh()
            return False
        probe.close()
        channel = connection.channel()
        channel.basic_qos(prefetch_count=PREFETCH)
        # Without it pika drops the consumer without a word and the feed would go deaf.
        channel.add_on_cancel_callback(self._on_cancel)
        self._results = channel
        channel.basic_consume(self.spec.results_name, self._on_record,
                              arguments={"x-stream-offset": self.place.start()})
        return True

    def _start_afresh(self) -> None:
        """Forget what the stream read so far held: totals, the live tally's run figures,
        the run pages' copies. What the workers' snapshots and the queue counts said stays,
        and so do the history page's depth samples (no record holds those)."""
        self._results, self._afresh, self.place = None, False, StreamPlace()
        try:
            self.copies.close()
            self.copies.start()
        except OSError as exc:
            self.log.warning("dashboard: cannot start the run pages' copy again (%s)", exc)
        with self.lock:
            old, self.totals = self.totals, RecordTotals()
            self.totals.minutes.depth = old.minutes.depth
            self.totals.minutes.sampled_since = old.minutes.sampled_since
            live = self.state
            self.state = FeedState(self.spec.name, gone_after=GONE_AFTER, totals=self.totals)
            for name in ("started", "counts", "slots", "rates", "parked"):
                setattr(self.state, name, getattr(live, name))

    # --- the callbacks (in the thread) -----------------------------------------------------
    def _on_live(self, _channel, _method, _properties, body: bytes) -> None:
        events = decode_events(body)
        with self.lock:
            for event in events:
                self.state.feed(event)

    def _on_cancel(self, _frame: object) -> None:
        """The broker ended our reading: the stream was deleted (maybe made again already,
        numbered from 0, perhaps shorter than what we read: resumed, the feed would hear
        nothing), or its node went away. Either way its first record is where to read from:
        the figures start over, as at a start."""
        self.log.warning("dashboard: the broker ended our reading of the results stream %r "
                         "(deleted, or its node went away): reading it again from its first "
                         "record", self.spec.results_name)
        self._afresh = True

    def _on_record(self, channel: BlockingChannel, method, properties: pika.BasicProperties,
                   body: bytes) -> None:
        current = channel is self._results  # (not in the if: mypy would narrow channel)
        if not current or self._afresh:
            return  # a reading given up: its connection is closed next
        offset = (properties.headers or {}).get("x-stream-offset")
        verdict = self.place.read(offset if isinstance(offset, int) else None, body)
        if verdict is Verdict.OTHER:
            self.log.warning("dashboard: the results stream %r is not the one read before "
                             "(deleted and made again): reading it from its first record",
                             self.spec.results_name)
            self._afresh = True
            return
        if verdict is Verdict.NEW:
            self._count(body)
        channel.basic_ack(method.delivery_tag)

    def _count(self, body: bytes) -> None:
        records = [r for r in decode_group(body) if kind_of(r) != "mark"]
        try:
            self.copies.add(records)  # before the totals count them: pages never lag /metrics
        except OSError as exc:
            self.log.warning("dashboard: cannot keep the run pages' copy (%s)", exc)
        with self.lock:
            for record in records:
                try:
                    self.state.feed(record)
                    self.totals.add(record)
                except (TypeError, ValueError, KeyError, AttributeError) as exc:
                    self.bad_records += 1  # a stranger's record: skipped, never a stall
                    if self.bad_records <= 3:
                        self.log.warning("dashboard: skipped a record it cannot read (%r): "
                                         "%.200s", exc, json.dumps(record, default=str))
