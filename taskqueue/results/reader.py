"""Read the results stream without taking anything away: any number of readers, any host.

``RecordReader`` opens a blocking connection (like the report's other reads) and consumes
``<queue>.results`` from a moment (``since``: a timestamp, so a run's records are found without
reading the weeks before it) or from its first record. A stream never ends: ``records()`` stops
once nothing has come for ``idle`` seconds (the broker sends what it has as fast as it can);
``follow()`` goes on, yielding None at each quiet moment so the caller can stop. Marks (a
worker's fences) are skipped. ``head()`` says where the stream begins now, so a report can say
that retention removed the start of a run.

Given several URLs (a cluster), a reader first asks each node where the stream ends and reads
from the one that holds the most: a node cut off from its cluster by a partition stays open
and answers from its own replica, which stops where the cut began (RabbitMQ 3.x), or does not
answer at all (4.3: the probe waits for ever there); a node whose answer takes longer than
``END_PROBE_TIMEOUT`` holds nothing for us.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import pika
from pika.adapters.blocking_connection import BlockingChannel

from taskqueue.broker.blocking import NoConfirm, confirmed_within, open_blocking
from taskqueue.broker.config import BrokerSettings, QueueSpec, mask_url
from taskqueue.errors import EXIT_REFUSED, UserError
from taskqueue.wire.record import decode_group, kind_of, stream_offset

PREFETCH = 500  # stream messages in flight to a reader (each is a group of records)
ACK_EVERY = 100
END_PROBE_SECONDS = 2.0  # reading the last chunk to learn where the stream ends, at most
END_PROBE_IDLE = 0.2
# The whole probe of one node (connect, declare, consume, read). A node cut off from its
# cluster never answered a consume on the stream here (4.3.6: for as long as the cut lasted;
# 3.10.8: not within 12 s), and while a node is cut off the others take 7-9 s to start one on
# 4.3.6, more on a busy machine (3.10: milliseconds). The nodes are asked at once.
END_PROBE_TIMEOUT = 20.0
STALL_IDLES = 10  # pauses of `idle` before the end: the stream stalls, stop there


class RecordReader:
    """The records of one queue's results stream, read as a stream (memory stays flat)."""

    def __init__(self, settings: BrokerSettings, spec: QueueSpec, idle: float = 1.0,
                 say: Callable[[str], None] | None = None) -> None:
        self.settings, self.spec, self.idle = settings, spec, idle
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self._chosen: BrokerSettings | None = None if len(settings.urls) > 1 else settings
        self.missing = False  # the stream does not exist (no worker of 0.4+ ran on the queue)
        self.first_offset: int | None = None  # of the first message this reader got
        self.last_offset = -1  # of the last message it got
        self._group_done = True  # every record of the last message has been handed out

    def records(self, since: float | None = None) -> Iterator[dict]:
        """Every record from *since* (None: the stream's start) up to now: up to the end the
        stream had when the reading began (however busy its writers are since), or a pause of
        ``idle`` seconds past it; a stream that stalls before its end is given
        ``STALL_IDLES`` pauses."""
        end = self.end_offset()
        if end is None:
            return
        idles = 0
        for record in self.follow(since):
            if record is None:
                idles += 1
                if self.last_offset >= end or idles >= STALL_IDLES:
                    return
                continue
            idles = 0
            yield record
            if self.last_offset >= end and self._group_done:
                return

    def end_offset(self, within: float | None = None) -> int | None:
        """The offset of the stream's last message now (None: empty or missing): read from a
        reader attached at "last", which gets the last chunk first. *within*: seconds the
        node has to answer (``NoConfirm`` past them)."""
        with self._channel(1000, within=within) as channel:
            if channel is None:
                return None
            last, deadline = None, None
            for method, properties, _body in channel.consume(
                    self.spec.results_name, arguments={"x-stream-offset": "last"},
                    inactivity_timeout=END_PROBE_IDLE):
                # from the reading's start (the broker's consume-ok), which may take seconds;
                # the last chunk may come a second after it (4.3 under a partition)
                now = time.monotonic()
                deadline = deadline or now + END_PROBE_SECONDS
                if now > deadline or (method is None and last is not None):
                    break
                if method is None:
                    continue
                offset = _offset(properties)
                last = offset if last is None or (offset or 0) > last else last
            return last

    def follow(self, since: float | None = None) -> Iterator[dict | None]:
        """Records from *since* on, as they come; None each time nothing came for ``idle``
        seconds (the caller decides whether to go on)."""
        with self._channel(PREFETCH) as channel:
            if channel is None:
                return
            unacked = 0
            for method, properties, body in channel.consume(
                    self.spec.results_name, arguments={"x-stream-offset": stream_offset(since)},
                    inactivity_timeout=self.idle):
                if method is None:
                    if unacked:
                        channel.basic_ack(0, multiple=True)
                        unacked = 0
                    yield None
                    continue
                offset = _offset(properties)
                if self.first_offset is None:
                    self.first_offset = offset
                self.last_offset = offset if offset is not None else self.last_offset
                unacked += 1
                if unacked >= ACK_EVERY:
                    channel.basic_ack(method.delivery_tag, multiple=True)
                    unacked = 0
                records = [r for r in decode_group(body) if kind_of(r) != "mark"]
                self._group_done = not records
                for number, record in enumerate(records, start=1):
                    record.setdefault("offset", offset)  # where it is in the stream
                    self._group_done = number == len(records)
                    yield record

    def head(self) -> tuple[int, float] | None:
        """(offset, time) of the stream's first record now; None when it is empty or gone.
        An offset above 0 means retention has removed older records."""
        with self._channel(1) as channel:
            if channel is None:
                return None
            for method, properties, body in channel.consume(
                    self.spec.results_name, arguments={"x-stream-offset": "first"},
                    inactivity_timeout=self.idle):
                if method is None:
                    return None
                times = [float(r.get("finished") or r.get("time") or 0)
                         for r in decode_group(body)]
                return _offset(properties) or 0, min(times, default=0.0)
            return None

    @contextlib.contextmanager
    def _channel(self, prefetch: int, within: float | None = None
                 ) -> Iterator[BlockingChannel | None]:
        """A channel to read the stream on (None if there is no stream), its connection
        closed afterwards; the broker's refusal becomes one clear line. *within*: seconds the
        whole use may take; past them the connection is cut (``NoConfirm``)."""
        connection = open_blocking(self._node())
        guard = (confirmed_within(connection, within) if within is not None
                 else contextlib.nullcontext())
        with guard:  # its close too: a silent node does not answer that either
            try:
                if not self._exists(connection):
                    yield None
                    return
                channel = connection.channel()
                channel.basic_qos(prefetch_count=prefetch)
                yield channel
            except pika.exceptions.ChannelClosedByBroker as exc:
                raise _refused(self.spec, exc) from None
            finally:
                # Closing cancels the reading, and pika hands back what it got but we did not
                # read with a nack, which a stream refuses by closing the connection: we are
                # done anyway.
                with contextlib.suppress(pika.exceptions.AMQPError):
                    if connection.is_open:
                        connection.close()

    def _node(self) -> BrokerSettings:
        """The settings to read with: the URL whose stream ends furthest first (once)."""
        if self._chosen is not None:
            return self._chosen
        began = time.monotonic()
        answers = ends_by_url(self.settings, self.spec, self.idle)
        if all(end is None for end in answers.values()) and \
                time.monotonic() - began >= END_PROBE_TIMEOUT:
            # none answered in time (4.3 right after a cut: every node's stream is slow):
            # once more, rather than read from the first, which may be the cut-off one
            self.say("no node said in time where the results stream ends; asking again")
            answers = ends_by_url(self.settings, self.spec, self.idle)
        ends = [(-1 if end is None else end, -number, url)
                for number, (url, end) in enumerate(answers.items())]
        if not ends:
            self._chosen = self.settings  # let the usual connect say why
            return self._chosen
        end, _, best = max(ends)
        first = self.settings.urls[0]
        behind = [e for e in ends if e[2] == first and e[0] < end]
        if behind:
            where = (f"ends at offset {behind[0][0]}" if behind[0][0] >= 0
                     else "could not be read")
            self.say(f"the results stream at {mask_url(first)} {where}, at {mask_url(best)} it "
                     f"ends at {end}: the first node is behind (cut off from its cluster?); "
                     "reading there")
        self._chosen = replace(self.settings,
                               urls=[best, *(u for u in self.settings.urls if u != best)])
        return self._chosen

    def _exists(self, connection: pika.BlockingConnection) -> bool:
        probe = connection.channel()
        try:
            probe.queue_declare(self.spec.results_name, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise _refused(self.spec, exc) from None
            self.missing = True
            return False
        probe.close()
        return True


def ends_by_url(settings: BrokerSettings, spec: QueueSpec, idle: float = 1.0
                ) -> dict[str, int | None]:
    """Where the results stream ends (its last message's offset) at each of *settings*'
    URLs, asked at once (a silent node costs ``END_PROBE_TIMEOUT`` once, not once per node);
    None where it is empty, missing, or the node is unreachable, refusing, closing on us or
    silent past ``END_PROBE_TIMEOUT``: it holds nothing for us."""
    def end_at(url: str) -> int | None:
        try:
            reader = RecordReader(replace(settings, urls=[url]), spec, idle)
            return reader.end_offset(within=END_PROBE_TIMEOUT)
        except (UserError, NoConfirm, pika.exceptions.AMQPError, OSError):
            return None

    if not settings.urls:
        return {}
    with concurrent.futures.ThreadPoolExecutor(len(settings.urls)) as pool:  # a connection each
        return dict(zip(settings.urls, pool.map(end_at, settings.urls)))


def _offset(properties: pika.BasicProperties) -> int | None:
    value = (properties.headers or {}).get("x-stream-offset")
    return value if isinstance(value, int) else None


def _refused(spec: QueueSpec, exc: pika.exceptions.ChannelClosedByBroker) -> UserError:
    if exc.reply_code == 403:
        return UserError(f"no permission to read the results stream {spec.results_name!r} "
                         f"({exc.reply_text}); grant read permission on it (rabbitmqctl "
                         "set_permissions)", EXIT_REFUSED)
    return UserError(f"cannot read the results stream {spec.results_name!r} ({exc.reply_text})",
                     EXIT_REFUSED)
