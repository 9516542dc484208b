"""``task_report.py --watch``: the live view's I/O, around ``LiveState`` (live.py).

A view binds a queue of its own (exclusive, bounded, gone when the view ends) to the
``<queue>.events`` exchange, so it sees every worker's snapshots, and reads the results stream
from where the latest run began, so its totals are the record's (finished tasks): it takes
nothing away from anyone, and any number of views may watch at once. Once a second it asks
the broker how many tasks wait in the queue and its companions (passive declares: nothing is
published, so it keeps working during a memory or disk alarm) and redraws: a full screen on a
terminal, one plain line per refresh elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import TextIO

import pika

from taskqueue.broker.blocking import open_blocking
from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.results.history import History
from taskqueue.views.live import LiveState, QueueCounts
from taskqueue.views.live_parked import TierWatch
from taskqueue.views.live_retry import UrgentRetryWatch, retrying
from taskqueue.views.store import passive_counts
from taskqueue.wire.events import decode_events
from taskqueue.wire.record import decode_group, run_began, stream_offset

VIEW_QUEUE_LIMIT = 10_000  # messages a slow view may fall behind before the oldest go


class TerminalScreen:
    """Redraw in place: cursor home, each line cleared to its end, the rest cleared."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        _enable_escape_codes()
        stream.write("\x1b[?25l\x1b[2J")  # hide the cursor, clear the screen

    def size(self) -> tuple[int, int]:
        """The terminal's own (columns, lines), asked at every refresh so that the view
        follows a resize (not $COLUMNS, which a parent may have set for itself)."""
        try:
            size = os.get_terminal_size(self.stream.fileno())
        except (OSError, ValueError):
            size = shutil.get_terminal_size()
        return size.columns, size.lines

    def draw(self, lines: list[str]) -> None:
        self.stream.write("\x1b[H" + "".join(f"{line}\x1b[K\n" for line in lines) + "\x1b[J")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\x1b[?25h")
        self.stream.flush()


def _enable_escape_codes() -> None:
    """Windows consoles draw escape codes only once asked to (virtual terminal mode)."""
    if sys.platform != "win32":
        return
    try:
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.GetStdHandle(-11)
        mode = ctypes.c_uint32()
        if kernel32.GetConsoleMode(handle, ctypes.byref(mode)):
            kernel32.SetConsoleMode(handle, mode.value | 0x0004)
    except (AttributeError, OSError):
        pass


def _stop_on_sigterm() -> None:
    def raise_interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, raise_interrupt)


def follow_results(connection: pika.BlockingConnection, spec: QueueSpec, state: LiveState,
                   history: History) -> bool:
    """Feed the view the results records from where the latest run began (and every one
    after); False when there is no results stream yet."""
    probe = connection.channel()
    try:
        probe.queue_declare(spec.results_name, passive=True)
    except pika.exceptions.ChannelClosedByBroker:
        return False
    probe.close()
    latest = history.latest_run()
    since = run_began(latest) if latest else None
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1000)

    def on_record(ch, method, _props, body: bytes) -> None:
        ch.basic_ack(method.delivery_tag)
        for record in decode_group(body):
            state.feed(record)

    channel.basic_consume(spec.results_name, on_record, arguments={
        "x-stream-offset": stream_offset(since if since is not None else time.time() - 60)})
    return True


def watch(settings: BrokerSettings, spec: QueueSpec, *, until_done: bool = False,
          interval: float = 1.0, stream: TextIO | None = None) -> LiveState:
    """Show the live view until Ctrl+C (or, with *until_done*, until the queue is empty and
    every worker idle). Returns the last state (for the caller's summary)."""
    stream = stream or sys.stdout
    connection = open_blocking(settings)
    state = LiveState(spec.name)
    state.parked_read, tiers = True, TierWatch(spec)  # the tasks a rate limit parked
    urgent_retry = UrgentRetryWatch(spec)  # retrying: <queue>.retry and <queue>.urgent.retry
    screen = TerminalScreen(stream) if stream.isatty() else None
    _stop_on_sigterm()
    try:
        channel = connection.channel()
        channel.exchange_declare(spec.exchange, "topic", durable=True)
        view = f"{spec.name}.watch.{uuid.uuid4().hex[:8]}"
        channel.queue_declare(view, exclusive=True, auto_delete=True,
                              arguments={"x-max-length": VIEW_QUEUE_LIMIT})
        channel.queue_bind(view, spec.exchange, "#")

        def on_events(_channel: object, _method: object, _properties: object,
                      body: bytes) -> None:
            for event in decode_events(body):
                state.feed(event)

        channel.basic_consume(view, on_events, auto_ack=True)
        history = History(settings, spec, Path("reports"))
        following = follow_results(connection, spec, state, history)
        done_for = 0
        while True:
            if not following:  # no results stream yet: the first worker is making it
                following = follow_results(connection, spec, state, history)
            counts = passive_counts(connection, [spec.name, spec.retry_name, spec.dead_name])
            task, retry, dead = (counts[name] for name in (spec.name, spec.retry_name,
                                                           spec.dead_name))
            retries = retrying(retry, urgent_retry.read(connection, time.monotonic()))
            state.counts = QueueCounts(task and task[0], retries, dead and dead[0],
                                       task and task[1])
            now = time.time()
            state.parked = tiers.read(connection, time.monotonic(), bool(state.rate_line(now)))
            if screen is not None:
                columns, lines = screen.size()
                screen.draw(state.screen(now, columns, lines - 1))  # the last line stays free
            else:
                print(state.line(now), file=stream, flush=True)
            done_for = done_for + 1 if until_done and state.all_done(now) else 0
            if done_for >= 2:  # twice in a row: a task in flight between two reads is seen
                break
            next_draw = time.monotonic() + interval
            while (left := next_draw - time.monotonic()) > 0:  # returns early on each event
                connection.process_data_events(time_limit=left)
    except KeyboardInterrupt:
        pass
    finally:
        if screen is not None:
            screen.close()
        # A stream refuses the nack pika sends for what it got but we did not read: done anyway.
        with contextlib.suppress(pika.exceptions.AMQPError):
            if connection.is_open:
                connection.close()
    return state
