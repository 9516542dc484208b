"""The worker's reading of the results stream: "was this task already done?", for the
deliveries that may be a copy of a task already done, and fences for the probes (reach.py).

A worker reads ``<queue>.results`` only while something waits for it, so what a task costs
does not grow with the number of workers nor with the stream's history:

* a delivery the emitter published once and the broker delivers for the first time (the common
  case) is not checked at all (``Delivery.needs_check``): no other worker can have done it;
* a delivery that may be a copy (redelivered, a retry, published again, or by another
  producer) is *checked*: the stream is read from the earliest moment that task's done record
  can date from (``Delivery.check_from``) up to a *fence* — a mark the worker writes (through
  its outbox) and reads back: then it has read every record written before the check;
* checks made while a reading is on share it (and its next fence); once nothing waits, the
  reading stops, and the next check continues from where it stopped (the records read are
  kept in a ``DoneIndex``), or starts again from its own moment when that is later;
* a probe (reach.py) and the first fence after connecting read from the stream's end only; a
  probe ends at the first message read.

This worker's own confirmed records are known at once. During a resource alarm no mark (and
no record, by anyone) can be written: checks are answered once the reading has caught up, and
probes after a grace (tail_alarm.py).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import OrderedDict
from collections.abc import Callable
from enum import Enum

import pika
from pika.channel import Channel
from pika.connection import Connection
from pika.spec import Basic

from taskqueue.broker.config import QueueSpec
from taskqueue.results.index import DoneIndex
from taskqueue.wire.record import decode_group, kind_of, mark, stream_offset
from taskqueue.worker.tail_alarm import PublishingAlarm, Where
from taskqueue.worker.tail_health import FENCE_TIMEOUT, ReadingHealth

PREFETCH = 1000
ACK_EVERY = 50
RETRY_SECONDS = 1.0
MAX_OWN = 10_000  # this worker's own recent done records kept for a check
Done = tuple[str, float]  # (worker, finished) of a done record
Answer = Callable[[Done | None], None]
Key = tuple[str, str]  # (run, message_id)
FROM_START = float("-inf")  # a check whose task may have a record anywhere in the stream


class Reading(Enum):
    """Where the tail's reading of the stream is."""
    STOPPED = "stopped"  # no connection
    PAUSED = "paused"  # connected; nothing waits for the stream, so it is not read
    OPENING = "opening"  # a channel and a consumer asked for
    ATTACHED = "attached"  # reading: a mark written from now on is sure to be read


class ResultsTail:
    """See the module docstring. ``start`` on each connection, ``stop`` when it is lost;
    ``check(key, since, exact, answer)``; ``note_done(record)`` for this worker's confirmed
    ones; ``probe(on_back)`` for reach.py."""

    def __init__(self, spec: QueueSpec, worker: str, log: logging.Logger,
                 write_mark: Callable[[dict], None],
                 on_refused: Callable[[BaseException], None]) -> None:
        self.spec, self.worker, self.log = spec, worker, log
        self.write_mark, self.on_refused = write_mark, on_refused
        self.state = Reading.STOPPED
        self.index = DoneIndex()  # the done records read since ``_covered_from``
        self._covered_from: float | None = None  # the index holds every record since (None:
        # it holds nothing to rely on)
        self._resume_at: int | None = None  # the offset after the last one read (paused)
        self._read_to = -1  # the last offset read since the index began (-1: none yet)
        self._own: OrderedDict[Key, Done] = OrderedDict()
        self._channel: Channel | None = None
        self._connection: Connection | None = None
        self._ioloop = None
        self._generation = 0  # a new one for each channel: callbacks of older ones are void
        self._requested = 0  # the newest fence asked for
        self._seen = 0  # the newest of our marks read back
        self._next_needed = 0  # a fence asked for while one is in flight: sent when it is back
        self._waiting: list[tuple[int, Key, Answer]] = []  # (fence, key, answer)
        self._probes: list[tuple[int, Callable[[], None]]] = []  # (fence, on_back)
        self._on_first_fence: Callable[[], None] | None = None
        self._on_first_fence_needs = 0
        self._unacked = 0
        self._from_end = False  # this reading began at the stream's end: all it reads is new
        self.alarm = PublishingAlarm(lambda: self._ioloop, lambda: Where(
            self._generation, self.state is Reading.ATTACHED, self.messages_read),
            lambda: self._answer_up_to(math.inf))
        self.health = ReadingHealth(log, worker, spec.results_name)
        self.position = -1  # the offset of the last message read: what answers are based on
        self.messages_read = 0  # by this tail, all readings
        self.readings = 0  # readings opened (each a channel and a consumer)
        self.records_read = 0  # task records among them
        self.checks = 0  # deliveries that had to read the stream (exact checks)
        self._nonce = uuid.uuid4().hex  # our marks are ours alone

    # --- connection ------------------------------------------------------------------------
    def start(self, connection: Connection, ioloop, on_ready: Callable[[], None]) -> None:
        """Read the stream on *connection* for a first fence; *on_ready* once it has come back
        (the worker can read and write the record: only then does it take tasks)."""
        self._generation += 1
        self._connection, self._ioloop = connection, ioloop
        self.state = Reading.PAUSED
        self._forget_history()  # nothing waits for it: the first fence reads from the end
        self._on_first_fence = on_ready
        self._on_first_fence_needs = self._fence()
        self._open()

    def stop(self) -> None:
        """The connection is lost: its deliveries are dropped (the broker delivers them
        again), so their checks go too; a probe is about this connection's node."""
        self._generation += 1
        self._channel = None
        self.state = Reading.STOPPED
        self._waiting.clear()
        self._probes.clear()
        self._on_first_fence = None
        self._keep_place()

    def _open(self) -> None:
        """Start reading: from where the last reading stopped, when the index still covers
        what the waiting checks need; from the earliest moment they need otherwise; from the
        stream's end when only a fence is waited for (a probe, the first one)."""
        connection = self._connection
        if self.state is not Reading.PAUSED or connection is None or not connection.is_open:
            return
        since = self._covered_from
        if since is None:
            offset: object = "next"  # only fences wait: what is written from now on
        elif self._resume_at is not None:
            offset = self._resume_at
        else:
            offset = "first" if since == FROM_START else stream_offset(since)
        self._generation += 1
        self.state = Reading.OPENING
        self._from_end = offset == "next"
        self.readings += 1
        generation = self._generation
        connection.channel(on_open_callback=lambda channel: self._consume(
            channel, generation, offset))

    def _consume(self, channel: Channel, generation: int, offset: object) -> None:
        if generation != self._generation:
            channel.close()
            return
        self._channel = channel
        self._unacked = 0
        channel.add_on_close_callback(lambda _ch, reason: self._on_closed(generation, reason))
        channel.add_on_cancel_callback(lambda _frame: self._on_cancelled(generation))
        channel.basic_qos(prefetch_count=PREFETCH,
                          callback=lambda _frame: self._subscribe(channel, generation, offset))

    def _subscribe(self, channel: Channel, generation: int, offset: object) -> None:
        if generation != self._generation or not channel.is_open:
            return  # paused or closed meanwhile: a consume on a closing channel would raise
        channel.basic_consume(self.spec.results_name, self._on_message,
                              arguments={"x-stream-offset": offset},
                              callback=lambda _frame: self._attached(generation))

    def _attached(self, generation: int) -> None:
        """Reading: a fence written now is sure to be read. Everything waiting waits for this
        one: earlier marks may have been written before the attach point, never to be seen."""
        if generation != self._generation:
            return
        self.state = Reading.ATTACHED
        self.health.readable()
        seq = self._requested + 1
        self._ask(seq)
        self._waiting = [(seq, key, answer) for _needs, key, answer in self._waiting]
        self._probes = [(seq, on_back) for _needs, on_back in self._probes]
        if self._on_first_fence is not None:
            self._on_first_fence_needs = seq
        self.alarm.answer_when_caught_up()  # if blocked

    def _pause(self) -> None:
        """Nothing waits for the stream: stop reading it (the next check goes on from here)."""
        channel = self._channel
        self._generation += 1
        self._channel = None
        self.state = Reading.PAUSED
        self._keep_place()
        if channel is not None and channel.is_open:
            channel.close()

    def _forget_history(self) -> None:
        """The next reading starts at the stream's end: the records read so far are dropped
        (a later check reads from its own moment again)."""
        self._covered_from = self._resume_at = None
        self._read_to = -1
        self.index = DoneIndex()

    def _keep_place(self) -> None:
        if self._covered_from is not None and self._read_to >= 0:
            self._resume_at = self._read_to + 1

    def _on_closed(self, generation: int, reason: BaseException) -> None:
        if generation != self._generation:
            return
        self._channel = None
        code = getattr(reason, "reply_code", None)
        if code == 403:
            self.on_refused(reason)
        elif code is not None:  # 404: the stream was deleted; the outbox makes it again
            self._restart(generation, getattr(reason, "reply_text", str(reason)))

    def _on_cancelled(self, generation: int) -> None:
        if generation == self._generation:
            self._restart(generation, "the broker cancelled the reading (stream deleted?)")

    def _restart(self, generation: int, why: str, delay: float = RETRY_SECONDS) -> None:
        """Read again, from where this reading had come to (*why*: the stream cannot be read
        now, e.g. deleted: the outbox makes it again; or the reading stalled)."""
        if generation != self._generation or self._ioloop is None:
            return
        if why:
            self.health.unreadable(why)
        self._pause()
        again = self._generation
        self._ioloop.call_later(delay, lambda: again == self._generation and self._open())

    # --- reading ---------------------------------------------------------------------------
    def _on_message(self, channel: Channel, method: Basic.Deliver,
                    properties: pika.BasicProperties, body: bytes) -> None:
        self._unacked += 1
        if self._unacked >= ACK_EVERY:  # a stream reader's acks only give credit: batch them
            channel.basic_ack(method.delivery_tag, multiple=True)
            self._unacked = 0
        if channel is not self._channel:
            return
        self.messages_read += 1
        offset = (properties.headers or {}).get("x-stream-offset")
        if isinstance(offset, int):
            self.position = self._read_to = offset
        for record in decode_group(body):
            kind = kind_of(record)
            if kind == "task":
                self.records_read += 1
                self.index.add(record)
            elif kind == "mark" and record.get("nonce") == self._nonce:
                seq = record.get("seq")
                if isinstance(seq, int) and seq > self._seen:
                    self._seen = seq
                    self._fence_came()
        if self._probes and self._from_end and channel is self._channel:
            self._reach_shown()

    def _reach_shown(self) -> None:
        """Any message a reading from the stream's end gets answers the probes (reach.py says
        why), not only our own mark: that would read every other quiet worker's probe mark
        meanwhile (bench/scale.md: 11,072 a second at 1,000 idle workers). Ours still goes
        out, so that something comes when no one else writes."""
        probes, self._probes = self._probes, []
        for _needs, on_back in probes:
            on_back()
        if not self._waiting and self._on_first_fence is None:
            self._pause()  # our mark, still on its way, is not waited for (a later reading
            # asks a new one on attach)

    def note_done(self, record: dict) -> None:
        """A record of ours the broker confirmed: known at once, before the task is acked."""
        if record.get("outcome") != "done":
            return
        key = (str(record.get("run_id") or ""), str(record.get("message_id") or ""))
        self._own[key] = (str(record.get("worker") or self.worker),
                          float(record.get("finished") or 0.0))
        if len(self._own) > MAX_OWN:
            self._own.popitem(last=False)

    # --- checks ----------------------------------------------------------------------------
    def check(self, key: Key | None, since: float | None, exact: bool,
              answer: Answer) -> None:
        """Answer whether the task *key* (run, message_id) has a done record. *exact*: it may
        be a copy of a task done elsewhere: read the stream from *since* (the earliest its
        record can date from; None: the stream's start) up to a fence first."""
        if key is None:
            answer(None)  # no message_id: never recognised, never skipped
            return
        done = self._own.get(key) or self._indexed(key)
        if done is not None or not exact:
            answer(done)  # a done record is proof enough; a first delivery needs no more
            return
        self.checks += 1
        wanted = FROM_START if since is None else since
        if not self._covers(wanted, key[0]):
            self._cover_from(wanted)
            self.index.watch(key[0])
        self._waiting.append((self._fence(), key, answer))
        self._open()
        self.alarm.answer_when_caught_up()  # if blocked and reading

    def _indexed(self, key: Key) -> Done | None:
        return self.index.lookup(*key)  # any done record read is proof, watched run or not

    def _covers(self, since: float, run: str) -> bool:
        """Whether the index holds (or the reading on will hold) every record from *since*."""
        covered = self._covered_from
        return covered is not None and since >= covered and self.index.watch(run)

    def _cover_from(self, since: float) -> None:
        """Read from *since* (earlier than the index holds): the index starts over."""
        covered = self._covered_from
        reading = self.state in (Reading.OPENING, Reading.ATTACHED)
        if reading:
            self._pause()  # and open again below, from the new start
        self._covered_from = since if covered is None else min(since, covered)
        self._resume_at, self._read_to = None, -1
        self.index = DoneIndex()
        if reading:
            self._open()

    def probe(self, on_back: Callable[[], None]) -> None:
        """Call *on_back* once a mark written from now on is read back: the stream took a
        write (a majority of its nodes has it) and this connection's node reads it (reach.py).
        During an alarm no mark can be written: answered after a grace (tail_alarm.py)."""
        if self.alarm.probe(on_back):
            return
        if self.state is Reading.PAUSED and not self._waiting:
            self._forget_history()  # a probe never reads the history: from the end
        self._probes.append((self._fence(), on_back))
        self._open()

    def _fence(self) -> int:
        """The fence a check made now must wait for: a mark written from now on. One is in
        flight at a time; checks made meanwhile share the next. (Not reading: asked for on
        attach; the caller opens a reading.)"""
        needed = self._requested + 1
        if self.state is not Reading.ATTACHED:
            return needed  # asked for on attach
        if self._requested <= self._seen:
            self._ask(needed)
        else:
            self._next_needed = needed
        return needed

    def _ask(self, seq: int) -> None:
        self._requested = seq
        self.write_mark(mark(self.worker, seq, self._nonce))

    def _fence_came(self) -> None:
        self._answer_up_to(self._seen)
        if self.state is Reading.ATTACHED and not self._waits():
            self._pause()

    def _answer_up_to(self, seen: float) -> None:
        """Answer what waits for a fence up to *seen*, and ask for the next one waited for.
        ``math.inf``: all of it, the first fence too (blocked and caught up: tail_alarm.py;
        no mark can come back during an alarm, not a sign of a partition)."""
        ready, self._waiting = ([w for w in self._waiting if w[0] <= seen],
                                [w for w in self._waiting if w[0] > seen])
        for _needs, key, answer in ready:
            self._answer(answer, key)
        back, self._probes = ([p for p in self._probes if p[0] <= seen],
                              [p for p in self._probes if p[0] > seen])
        for _needs, on_back in back:
            on_back()
        if self._next_needed > seen and self._requested <= seen \
                and self.state is Reading.ATTACHED:
            self._ask(self._next_needed)
        if self._on_first_fence is not None and self._on_first_fence_needs <= seen:
            callback, self._on_first_fence = self._on_first_fence, None
            callback()

    def _waits(self) -> bool:
        return bool(self._waiting or self._probes or self._on_first_fence is not None
                    or self._requested > self._seen)

    def _answer(self, answer: Answer, key: Key) -> None:
        try:
            answer(self._own.get(key) or self._indexed(key))
        except Exception:  # the caller's problem must not lose the other answers
            self.log.exception("[%s] could not act on the answer for %s", self.worker, key[1])

    # --- a reading that stalls ----------------------------------------------------------------
    def check_fences(self, now: float) -> None:
        """Called on the consumer's beat: a fence asked for, and for ``FENCE_TIMEOUT`` neither
        a mark of ours nor any other message read (not blocked): our reading of the stream
        has stalled (its node went away without a word). Read it again from where it was;
        the fence is asked for again on attach."""
        waiting = self._requested > self._seen and not self.alarm.blocked \
            and self.state is Reading.ATTACHED
        if self.health.stalled(now, waiting, (self._seen, self.messages_read), self.position):
            self._restart(self._generation, f"no mark came back for {FENCE_TIMEOUT:.0f} s",
                          delay=0.0)
