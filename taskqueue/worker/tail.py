"""The worker's reading of the results stream: "was this task already done?", answered against
the record caught up to the present.

``ResultsTail`` consumes ``<queue>.results`` on the worker's consuming connection (it never
publishes, so an alarm does not stop it) from where the earliest run it was handed began, and
keeps the done records of those runs in a ``DoneIndex``. Records come in a little after they
are written, so an answer that must be exact waits for a *fence*: the worker writes a mark into
the stream (through its outbox) and, once its own mark comes back, it has read every record
written before it. A fence is needed for a redelivered task (it may have been done by a worker
that died before its ack), for the first task of a run (its records are being read), and after
a reconnect; other deliveries are answered at once from what was read, plus this worker's own
confirmed records (so a task it did itself is known before its next delivery). Fences are
shared: every check that waits is answered by the next mark. During a resource alarm no mark
(and no record, by anyone) can be written: checks are then answered from what the stream holds,
read for a moment.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

import pika
from pika.channel import Channel
from pika.connection import Connection
from pika.spec import Basic

from taskqueue.broker.config import QueueSpec
from taskqueue.results.index import DoneIndex
from taskqueue.results.record import (
    CLOCK_SKEW,
    decode_group,
    kind_of,
    mark,
    run_began,
    stream_offset,
)

PREFETCH = 1000
ACK_EVERY = 50
FENCE_TIMEOUT = 15.0  # seconds for a mark to come back before reading the stream again
BLOCKED_GRACE = 1.0  # seconds to read what the stream holds when no fence can be written
RETRY_SECONDS = 1.0
SAY_AGAIN_SECONDS = 10.0  # a reason that lasts is said again this often
Answer = Callable[[tuple[str, float] | None], None]  # (worker, finished) of the done record


class ResultsTail:
    """See the module docstring. ``start`` on each connection, ``stop`` when it is lost;
    ``check(key, exact, answer)``; ``note_done(record)`` for this worker's confirmed ones."""

    def __init__(self, spec: QueueSpec, worker: str, log: logging.Logger,
                 write_mark: Callable[[dict], None],
                 on_refused: Callable[[BaseException], None]) -> None:
        self.spec, self.worker, self.log = spec, worker, log
        self.write_mark, self.on_refused = write_mark, on_refused
        self.index = DoneIndex()
        self._since: float | None = None  # where reading starts (None: the stream's start)
        self._from_start = False  # a run with no time in its id: read everything
        self._reading_from = float("inf")  # where the current reading began (a timestamp)
        self._channel: Channel | None = None
        self._connection: Connection | None = None
        self._ioloop = None
        self._generation = 0
        self._requested = 0  # the newest fence asked for
        self._seen = 0  # the newest of our marks read back
        self._waiting: list[tuple[int, tuple[str, str], Answer]] = []
        self._probes: list[tuple[int, Callable[[], None]]] = []  # (fence, on_back): reach.py
        self._catching_up: dict[str, int] = {}  # run -> the fence that ends its catch-up
        self._on_first_fence: Callable[[], None] | None = None
        self._on_first_fence_needs = 0
        self._next_needed = 0  # a fence asked for while one is in flight: sent when it is back
        self._attached_now = False  # reading on this generation: fences may be written
        self._unacked = 0
        self._blocked_since: float | None = None  # the broker blocks our publishing (alarm)
        self._fence_watch: tuple[tuple[int, int], float] | None = None  # (progress, since)
        self._catch_up: tuple[float, int, float] | None = None  # a long wait: said now and then
        self.position = -1  # the offset of the last message read: what answers are based on
        self.messages_read = 0  # by this tail, all readings: grows while a reading catches up
        self._nonce = uuid.uuid4().hex  # our marks are ours alone
        self._unreadable: tuple[str, float, float, int] | None = None  # said once, then rarely

    # --- connection ------------------------------------------------------------------------
    def start(self, connection: Connection, ioloop, on_ready: Callable[[], None]) -> None:
        """Read the stream on *connection*; *on_ready* once a first fence has come back (the
        worker can read and write the record: only then does it take tasks)."""
        self._generation += 1
        self._connection, self._ioloop = connection, ioloop
        self._on_first_fence = on_ready
        for run in self.index.runs:
            self._catching_up[run] = 0  # what came meanwhile is read again (set on attach)
        self._subscribe(self._generation)

    def stop(self) -> None:
        self._generation += 1
        self._channel = None
        self._attached_now = False
        self._probes.clear()  # a probe is about this connection's node: asked again on the next

    def _subscribe(self, generation: int) -> None:
        connection = self._connection
        if generation != self._generation or connection is None or not connection.is_open:
            return
        connection.channel(on_open_callback=lambda channel: self._consume(channel, generation))

    def _consume(self, channel: Channel, generation: int) -> None:
        if generation != self._generation:
            channel.close()
            return
        self._channel = channel
        self._unacked = 0
        channel.add_on_close_callback(lambda _ch, reason: self._on_closed(generation, reason))
        channel.add_on_cancel_callback(lambda _frame: self._on_cancelled(generation))
        # A start a little in the past, not "next": nothing written after the attach point may
        # be missed, and fences are only written once attached (see _attached).
        since = self._since if self._since is not None else time.time() - CLOCK_SKEW
        offset = "first" if self._from_start else stream_offset(since)
        self._reading_from = float("-inf") if self._from_start else since
        channel.basic_qos(prefetch_count=PREFETCH, callback=lambda _frame: channel.basic_consume(
            self.spec.results_name, self._on_message, arguments={"x-stream-offset": offset},
            callback=lambda _frame: self._attached(generation)))

    def _attached(self, generation: int) -> None:
        """Reading: a fence written now is sure to be read. Everything waiting (checks, runs
        catching up, the first fence) waits for this one: earlier marks may have been written
        before the attach point, and would never be seen."""
        if generation != self._generation:
            return
        self._attached_now = True
        if self._unreadable is not None and self._unreadable[3] > 1:
            _why, since, _said, refusals = self._unreadable
            self.log.info("[%s] the results stream %r is readable again (after %d tries in "
                          "%.0f s)", self.worker, self.spec.results_name, refusals,
                          time.monotonic() - since)
        self._unreadable = None
        seq = self._requested + 1
        self._ask(seq)
        self._waiting = [(seq, key, answer) for _needs, key, answer in self._waiting]
        self._probes = [(seq, on_back) for _needs, on_back in self._probes]
        self._catching_up = dict.fromkeys(self._catching_up, seq)
        self._on_first_fence_needs = seq
        if self._blocked_since is not None:
            self._answer_blocked_later()

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
        """Read again from the start point: a run that began earlier came (*why* empty), or
        the stream cannot be read now (deleted: the outbox makes it again)."""
        if generation != self._generation or self._ioloop is None:
            return
        if why:
            self._say_unreadable(why)
        self._generation += 1
        self._attached_now = False
        channel, self._channel = self._channel, None
        if channel is not None and channel.is_open:
            channel.close()
        for run in self.index.runs:
            self._catching_up[run] = self._fence()
        again = self._generation
        self._ioloop.call_later(delay, lambda: self._subscribe(again))

    def _say_unreadable(self, why: str) -> None:
        """One line, then one every ``SAY_AGAIN_SECONDS`` while the same reason lasts (a
        stream electing a new leader refuses every second for up to a minute)."""
        now = time.monotonic()
        last = self._unreadable  # (why, since, said at, refusals)
        if last is None or last[0] != why:
            self._unreadable = (why, now, now, 1)
            self.log.warning("[%s] the results stream %r cannot be read (%s): reading it again "
                             "shortly", self.worker, self.spec.results_name, why)
            return
        _why, since, said_at, refusals = last
        if now - said_at >= SAY_AGAIN_SECONDS:
            self.log.warning("[%s] the results stream %r still cannot be read (%s; %d tries in "
                             "%.0f s): reading it again shortly", self.worker,
                             self.spec.results_name, why, refusals + 1, now - since)
            said_at = now
        self._unreadable = (why, since, said_at, refusals + 1)

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
            self.position = offset
        for record in decode_group(body):
            kind = kind_of(record)
            if kind == "task":
                self.index.add(record)
            elif kind == "mark" and record.get("nonce") == self._nonce:
                seq = record.get("seq")
                if isinstance(seq, int) and seq > self._seen:
                    self._seen = seq
                    self._fence_came()

    def note_done(self, record: dict) -> None:
        """A record of ours the broker confirmed: known at once, before the task is acked."""
        self.index.add(record)

    # --- checks ----------------------------------------------------------------------------
    def check(self, key: tuple[str, str] | None, exact: bool, answer: Answer) -> None:
        """Answer whether the task *key* (run, message_id) has a done record. *exact*: it may
        have been done just now elsewhere (a redelivery): wait for a fence first."""
        if key is None:
            answer(None)  # no message_id: never recognised, never skipped
            return
        run = key[0]
        if not self.index.watched(run):
            self._first_sight(run)
        else:
            self.index.watch(run)  # (most recently handed)
        if exact or run in self._catching_up:
            if self._blocked_since is not None and self._attached_now:
                self._answer_when_read(key, answer)
            else:
                self._waiting.append((self._fence(), key, answer))
            return
        answer(self.index.lookup(*key))

    def _first_sight(self, run: str) -> None:
        """A run this worker had not been handed: its records are all in the index if they
        were kept since reading began before the run did; else read it again from where it
        began. Either way its first check waits for a fence (what is written now is read)."""
        complete = self.index.watch(run)
        began = run_began(run)
        if began is None:  # no time in its id: only the whole stream is sure to hold them
            again = not self._from_start
            self._from_start = True
        else:
            again = not (complete and began >= self._reading_from)
            if again and (self._since is None or began < self._since):
                self._since = began
        self._catching_up[run] = self._fence()
        if again and self._channel is not None:
            self._restart(self._generation, "", delay=0.0)

    def probe(self, on_back: Callable[[], None]) -> None:
        """Call *on_back* once a mark written from now on is read back: the stream took a
        write (a majority of its nodes has it) and this connection's node reads it (reach.py).
        During an alarm no mark can be written: answered after ``BLOCKED_GRACE`` instead."""
        if self._blocked_since is not None and self._attached_now and self._ioloop is not None:
            generation = self._generation
            self._ioloop.call_later(BLOCKED_GRACE, lambda: generation == self._generation
                                    and on_back())
            return
        self._probes.append((self._fence(), on_back))

    def _fence(self) -> int:
        """The fence a check made now must wait for: a mark written from now on. One is in
        flight at a time; checks made meanwhile share the next."""
        needed = self._requested + 1
        if not self._attached_now:
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
        seen = self._seen
        for run, needs in list(self._catching_up.items()):
            if needs <= seen:
                del self._catching_up[run]
        ready, self._waiting = ([w for w in self._waiting if w[0] <= seen],
                                [w for w in self._waiting if w[0] > seen])
        for _needs, key, answer in ready:
            self._answer(answer, key)
        back, self._probes = ([p for p in self._probes if p[0] <= seen],
                              [p for p in self._probes if p[0] > seen])
        for _needs, on_back in back:
            on_back()
        if self._next_needed > seen and self._requested <= seen and self._attached_now:
            self._ask(self._next_needed)
        if self._on_first_fence is not None and self._on_first_fence_needs <= seen:
            callback, self._on_first_fence = self._on_first_fence, None
            callback()

    def publishing_blocked(self) -> None:
        """A memory or disk alarm: no mark can be written until it ends, and no record either,
        by anyone. What the stream holds is read within moments; after ``BLOCKED_GRACE`` the
        waiting checks are answered from it (and the first fence is not waited for: the first
        record will show whether we may write)."""
        self._blocked_since = time.monotonic()
        self._answer_blocked_later()

    def _answer_blocked_later(self) -> None:
        if self._ioloop is None:
            return
        generation = self._generation

        def answer_now() -> None:
            if generation != self._generation or not self._attached_now \
                    or self._blocked_since is None:
                return
            self._catching_up.clear()
            waiting, self._waiting = self._waiting, []
            for _needs, key, answer in waiting:
                self._answer(answer, key)
            probes, self._probes = self._probes, []
            for _needs, on_back in probes:
                on_back()  # no mark can come back during an alarm: not a sign of a partition
            if self._on_first_fence is not None:
                callback, self._on_first_fence = self._on_first_fence, None
                callback()

        self._ioloop.call_later(BLOCKED_GRACE, answer_now)

    def check_fences(self, now: float) -> None:
        """Called on the consumer's beat: a fence asked for, and for ``FENCE_TIMEOUT`` neither
        a mark of ours nor any other message read (not blocked): our reading of the stream
        has stalled (its node went away without a word). Read it again from the start point;
        the fence is asked for again on attach. A reading still catching up (a long stream, a
        busy node) is not stalled: starting it over would never let it end (found by make
        chaos, seed 148826: every worker re-read the stream every 15 s for minutes)."""
        if self._requested <= self._seen or self._blocked_since is not None \
                or not self._attached_now:
            self._fence_watch = self._catch_up = None
            return
        progress = (self._seen, self.messages_read)
        if self._fence_watch is None or self._fence_watch[0] != progress:
            self._fence_watch = (progress, now)  # marks or records still come: not stalled
            self._say_catching_up(now)
        elif now - self._fence_watch[1] >= FENCE_TIMEOUT:
            self._fence_watch = None
            self._restart(self._generation, f"no mark came back for {FENCE_TIMEOUT:.0f} s",
                          delay=0.0)

    def _say_catching_up(self, now: float) -> None:
        """Long work shows progress: a reading that has kept the worker waiting for
        ``FENCE_TIMEOUT`` says how far it is, then every ``SAY_AGAIN_SECONDS``."""
        if self._catch_up is None:
            self._catch_up = (now, self.messages_read, now)  # (since, read then, said at)
            return
        since, read_then, said_at = self._catch_up
        if now - since >= FENCE_TIMEOUT and now - said_at >= SAY_AGAIN_SECONDS:
            self.log.info("[%s] still reading the results stream %r to catch up: %d messages "
                          "in %.0f s, at offset %d; the checks of tasks wait for it", self.worker,
                          self.spec.results_name, self.messages_read - read_then, now - since,
                          self.position)
            self._catch_up = (since, read_then, now)

    def _answer(self, answer: Answer, key: tuple[str, str]) -> None:
        try:
            answer(self.index.lookup(*key))
        except Exception:  # the caller's problem must not lose the other answers
            self.log.exception("[%s] could not act on the answer for %s", self.worker, key[1])

    def publishing_unblocked(self) -> None:
        self._blocked_since = None  # the marks asked for meanwhile go out now

    def _answer_when_read(self, key: tuple[str, str], answer: Answer) -> None:
        """Blocked: no fence can be written; answer once the stream had a moment to be read."""
        since = self._blocked_since or time.monotonic()
        delay = max(0.0, since + BLOCKED_GRACE - time.monotonic())
        self._ioloop.call_later(delay, lambda: answer(self.index.lookup(*key)))

    @property
    def waiting(self) -> int:
        return len(self._waiting)
