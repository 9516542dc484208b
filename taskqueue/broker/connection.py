"""Connect to the first broker that answers; on loss, reconnect with capped backoff and jitter.

``BrokerSession`` owns one pika ``SelectConnection`` at a time (asynchronous, so heartbeats
keep flowing whatever the work does) and one channel on it. It tries the URLs in order, fails
over to the next on loss, and gives up with a clear ``UserError`` once ``connect_timeout``
seconds pass without getting back to work (an open connection on which the queues cannot be
used does not count). Subclasses (the publisher, the consumer and the worker's outbox) only
say what to do when a channel is ready and when it is lost. Several sessions may share one
I/O loop (the worker consumes on one connection and publishes on another).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

import pika
import pika.exceptions as pe
from pika.adapters.select_connection import IOLoop
from pika.channel import Channel

from taskqueue.broker.config import BrokerSettings, QueueSpec, mask_url
from taskqueue.broker.explain import explain_channel_error, explain_connect_error
from taskqueue.broker.frames import EagerWriteConnection
from taskqueue.broker.params import connection_parameters
from taskqueue.broker.topology import HomeNodeDown, QueueSetup, Topology
from taskqueue.errors import EXIT_REFUSED, EXIT_UNREACHABLE, UserError

SIGNAL_POLL_SECONDS = 0.1  # how soon Ctrl+C is noticed; also wakes select() on Windows
# A clean close waits for the broker's Close-Ok. A broker that blocks the connection (memory
# or disk alarm) stops reading from it, and a path gone silent never answers: after this long
# the socket is dropped instead (the broker then treats it as a lost connection).
CLOSE_WAIT_SECONDS = 3.0
REFUSAL_PERSISTS_SECONDS = 15.0  # a refused login / vhost counts as final only after this long


class Backoff:
    """Capped exponential backoff with full jitter: 0.5 s, 1 s, 2 s ... up to *cap* seconds,
    each drawn at random below that bound so that many workers do not reconnect in step."""

    def __init__(self, first: float = 0.5, cap: float = 10.0) -> None:
        self.first, self.cap, self.attempt = first, cap, 0

    def next_delay(self) -> float:
        bound = min(self.cap, self.first * 2 ** self.attempt)
        self.attempt += 1
        return random.uniform(bound / 2, bound)

    def reset(self) -> None:
        self.attempt = 0


class BrokerSession:
    """One channel to the broker, kept open across broker restarts and node failures.

    Contract for subclasses:
      * ``on_channel_ready(channel)``: the channel is open; declare, consume or publish, then
        call ``mark_ready()`` once back at work (this is what resets ``connect_timeout``).
      * ``on_channel_lost()``: the channel is gone (messages in flight are unconfirmed / will
        be redelivered); a new ``on_channel_ready`` follows once reconnected.
      * ``on_stop_request(count)``: Ctrl+C / SIGTERM number *count* arrived (on the I/O loop).
      * call ``finish()`` when done: closes the connection, then ends ``run()`` (or calls
        ``on_finished`` when the loop belongs to another session).
      * call ``fail(error)`` for an error that retrying cannot fix.
    ``run()`` blocks in the I/O loop and raises the UserError given to ``fail`` (or the
    connect timeout) once the loop ends.
    """

    label = ""  # how log lines name this connection ("" for the script's main one)

    def __init__(self, settings: BrokerSettings, log: logging.Logger, *, queue_name: str = "",
                 ioloop: IOLoop | None = None) -> None:
        self.settings = settings
        self.queue_name = queue_name
        self.log = log
        self.ioloop = ioloop or IOLoop()
        self.owns_loop = ioloop is None
        self.channel: Channel | None = None
        self.connect_timeout = settings.connect_timeout
        self.on_finished: Callable[[], None] | None = None
        self.signals = 0  # raised by a signal handler; read by the loop (see note_signal)
        self._signals_seen = 0
        self._connection: pika.SelectConnection | None = None
        self._url_index = 0
        self._backoff = Backoff()
        self._deadline = 0.0
        self._ready = False
        self._opened_unready = False
        self._finishing = False
        self._finished = False
        self._error: UserError | None = None
        self._last_reason = ""
        self._dropped: str | None = None  # why we closed the connection ourselves, if we did
        self._refused_since: float | None = None  # a refused login or vhost, since when
        self.blocked = False
        self.connections_made = 0

    # --- the public surface -------------------------------------------------------------
    def run(self) -> None:
        self.start()
        self.ioloop.start()
        if self._error:
            raise self._error

    def start(self) -> None:
        """Begin connecting (the loop is started by ``run`` or by the loop's owner)."""
        self._deadline = time.monotonic() + self.connect_timeout
        if self.owns_loop:
            self.ioloop.call_later(SIGNAL_POLL_SECONDS, self._poll_signals)
        self._connect()

    def finish(self, wait: float = CLOSE_WAIT_SECONDS) -> None:
        """Close the connection and end ``run()``: cleanly if the broker answers within *wait*
        seconds, else by dropping the socket (at once while the broker blocks us: it reads
        nothing from a blocked connection, not even Close)."""
        self._finishing = True
        connection = self._connection
        if connection and connection.is_open:
            connection.close()
            self.ioloop.call_later(0 if self.blocked else wait,
                                   lambda: self._abort_if_still_closing(connection))
        elif connection and connection.is_closing:
            self.ioloop.call_later(0 if self.blocked else wait,
                                   lambda: self._abort_if_still_closing(connection))
        else:
            self._done()

    def _abort_if_still_closing(self, connection: pika.SelectConnection,
                                ending: bool = True) -> None:
        current = self._connection  # a new connection since: this one was dealt with
        if current is None or current is not connection or self._finished or current.is_closed:
            return
        self.log.warning("%sthe broker did not answer the close (%s): dropping the connection",
                         self._prefix(), "it blocks us" if self.blocked else "no reply")
        try:
            current._adapter_disconnect_stream()  # pika's own abort path: on_close follows
        except Exception:  # a transport already gone: nothing left to drop
            if ending:  # (a dropped connection, not ending: on_close starts over anyway)
                self._done()

    def fail(self, error: UserError) -> None:
        self._error = self._error or error
        self.finish()

    @property
    def error(self) -> UserError | None:
        return self._error

    def mark_ready(self) -> None:
        """Back at work: the next loss starts a fresh ``connect_timeout``."""
        self._ready = True
        self._opened_unready = False
        self._backoff.reset()

    def note_signal(self) -> None:
        """For a signal handler: only counts. Locks are not safe there (the handler runs on the
        thread of the I/O loop, which may hold one), so the loop polls the count."""
        self.signals += 1

    def on_stop_request(self, count: int) -> None:
        """Default: stop at once."""
        self.finish()

    def call_threadsafe(self, callback: Callable[[], None]) -> None:
        """Run *callback* on the I/O thread (from a work thread)."""
        self.ioloop.add_callback_threadsafe(callback)

    def inspect_queue(self, name: str, on_result: Callable[[int | None, int | None], None]) -> None:
        """Ask for a queue's (depth, consumer count) on a short-lived channel of its own, so a
        queue that is gone (404) closes only that channel. (None, None) when unknown."""
        if not (self._connection and self._connection.is_open):
            on_result(None, None)
            return
        answered = False

        def answer(depth: int | None, consumers: int | None) -> None:
            nonlocal answered
            if not answered:
                answered = True
                on_result(depth, consumers)

        def on_declared(channel: Channel, frame: pika.frame.Method) -> None:
            answer(frame.method.message_count, frame.method.consumer_count)
            channel.close()

        def on_open(channel: Channel) -> None:
            channel.add_on_close_callback(lambda _channel, _reason: answer(None, None))
            channel.queue_declare(name, passive=True,
                                  callback=lambda frame: on_declared(channel, frame))

        self._connection.channel(on_open_callback=on_open)

    @property
    def url(self) -> str:
        return self.settings.urls[self._url_index % len(self.settings.urls)]

    @property
    def connection(self) -> pika.SelectConnection | None:
        return self._connection

    # --- for subclasses ------------------------------------------------------------------
    def on_channel_ready(self, channel: Channel) -> None:
        raise NotImplementedError

    def on_channel_lost(self) -> None:
        """Default: nothing to clean up."""

    def on_blocked(self, reason: str) -> None:
        self.log.warning("the broker is blocking publishers (%s): waiting; free memory or disk "
                         "space on the broker (see 'rabbitmq-diagnostics alarms')", reason)

    def on_unblocked(self) -> None:
        self.log.info("the broker accepts messages again")

    def set_up_queues(self, channel: Channel, spec: QueueSpec,
                      on_done: Callable[[Topology], None]) -> None:
        """Declare-or-adopt the queues (topology.py) on this connection, then *on_done*. A
        queue whose node is down is waited for (within ``connect_timeout``), loudly."""
        def on_error(exc: BaseException) -> None:
            if isinstance(exc, HomeNodeDown):
                self.log.error("%s; it is a classic queue, which lives on that one node: "
                               "waiting for its node to come back (quorum queues do not stop "
                               "for one node)", exc)
                self.drop_connection(str(exc))
                return
            error = explain_channel_error(exc, spec.name)
            if error:
                self.fail(error)
            else:
                self.log.warning("setting up the queues failed (%s); starting over", exc)
                self.drop_connection(str(exc))

        QueueSetup(channel.connection, spec, self.log, on_done, on_error,
                   quiet=self.connections_made > 1).start()

    def drop_connection(self, why: str) -> None:
        """Start over on a fresh connection (after a setup problem worth waiting out, or a
        node that went silent). A close the broker does not answer within CLOSE_WAIT_SECONDS
        drops the socket (a node cut off or paused may never answer it)."""
        self._last_reason = why
        connection = self._connection
        if connection and connection.is_open:
            self._dropped = why
            connection.close()
            self.ioloop.call_later(CLOSE_WAIT_SECONDS,
                                   lambda: self._abort_if_still_closing(connection, False))

    # --- connection lifecycle --------------------------------------------------------------
    def _done(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self.on_finished is not None:
            self.on_finished()
        if self.owns_loop:
            self.ioloop.stop()

    def _poll_signals(self) -> None:
        while self._signals_seen < self.signals:
            self._signals_seen += 1
            self.on_stop_request(self._signals_seen)
        if not self._finished:
            self.ioloop.call_later(SIGNAL_POLL_SECONDS, self._poll_signals)

    def _connect(self) -> None:
        if self._finishing:
            self._done()
            return
        try:
            params = connection_parameters(self.url, self.settings)
        except UserError as exc:
            self.fail(exc)
            return
        self.log.debug("connecting to %s", mask_url(self.url))
        self._connection = EagerWriteConnection(
            params, on_open_callback=self._on_open, on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_closed, custom_ioloop=self.ioloop)

    def _on_open(self, connection: pika.SelectConnection) -> None:
        self.connections_made += 1
        self._refused_since = None
        self._dropped = None
        self._opened_unready = True
        again = " again" if self.connections_made > 1 else ""
        self.log.info("%sconnected%s to %s", self._prefix(), again, mask_url(self.url))
        connection.add_on_connection_blocked_callback(self._on_blocked)
        connection.add_on_connection_unblocked_callback(self._on_unblocked)
        connection.channel(on_open_callback=self._on_channel_open)

    def _prefix(self) -> str:
        return f"{self.label}: " if self.label else ""

    def _on_blocked(self, _connection: object, frame: pika.frame.Method) -> None:
        # RabbitMQ stops reading from publishers while a memory or disk alarm is on.
        self.blocked = True
        self.on_blocked(getattr(frame.method, "reason", "") or "resource alarm")

    def _on_unblocked(self, _connection: object, _frame: object) -> None:
        self.blocked = False
        self.on_unblocked()

    def _on_open_error(self, _connection: object, exc: BaseException) -> None:
        fatal, reason = explain_connect_error(exc, self.url)
        refusal = isinstance(exc, (pe.ProbableAuthenticationError, pe.AuthenticationError,
                                   pe.ProbableAccessDeniedError))
        if fatal and (not refusal or self._refusal_is_final()):
            self._error = self._error or UserError(reason, EXIT_REFUSED)
            self._finishing = True
            self._done()
            return
        if refusal:
            reason += " (a node starting or stopping refuses too: trying again)"
        else:
            self._refused_since = None
        self._last_reason = reason
        self._retry_later(f"{self._prefix()}cannot reach {mask_url(self.url)}: {reason}")

    def _refusal_is_final(self) -> bool:
        """A refused login or vhost is final only when it persists: a booting node opens its
        listener before its users and vhosts are up, and a stopping one cuts handshakes short
        (pika calls both a refused login). A session that was connected before is never ended
        by one: it keeps trying within --connect-timeout."""
        now = time.monotonic()
        if self._refused_since is None:
            self._refused_since = now
        if self.connections_made:
            return False
        return now - self._refused_since >= REFUSAL_PERSISTS_SECONDS or now >= self._deadline

    def _retry_later(self, why: str) -> None:
        if self._finishing:
            self._done()
            return
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            urls = ", ".join(map(mask_url, self.settings.urls))
            self._error = self._error or UserError(
                f"connected to {urls} but could not use the queues within "
                f"{self.connect_timeout:g} s ({self._last_reason}); bring the node back, or "
                "raise --connect-timeout" if self._opened_unready else
                f"no RabbitMQ broker answered at {urls} within {self.connect_timeout:g} s "
                f"({self._last_reason}); start the broker, check --url / RABBITMQ_URL, or "
                "raise --connect-timeout", EXIT_UNREACHABLE)
            self._finishing = True
            self._done()
            return
        self._url_index += 1  # fail over: the next attempt goes to the next URL in the list
        delay = min(self._backoff.next_delay(), remaining)
        self.log.warning("%s; retrying in %.1f s (attempt %d)", why, delay, self._backoff.attempt)
        self.ioloop.call_later(delay, self._connect)

    def _on_channel_open(self, channel: Channel) -> None:
        self.channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        self.on_channel_ready(channel)

    def _on_channel_closed(self, channel: Channel, reason: BaseException) -> None:
        if channel is not self.channel:
            return
        self.channel = None
        self.on_channel_lost()
        if self._finishing or self._dropped is not None:
            return  # (dropped: the close is ours, and its 'Normal shutdown' would hide why)
        error = explain_channel_error(reason, self.queue_name)
        if error:
            self.fail(error)
            return
        text = str(reason)
        if "delivery acknowledgement" in text and "timed out" in text:
            self.log.error("the broker closed the channel: a task ran longer than its "
                           "consumer_timeout (rabbitmq.conf, default 1800000 ms); the task is "
                           "redelivered. Raise consumer_timeout for tasks that long.")
        else:
            self.log.warning("%schannel closed by the broker: %s", self._prefix(), reason)
        self._last_reason = text
        # A closed channel on a live connection: start over on a fresh connection.
        if self._connection and self._connection.is_open:
            self._connection.close()

    def _on_closed(self, _connection: object, reason: BaseException) -> None:
        # A block belongs to the connection: the next one starts unblocked (the broker blocks
        # it again if the alarm is still on), or it would wait for an unblock never sent.
        self.blocked = False
        if self.channel is not None:
            self.channel = None
            self.on_channel_lost()
        dropped, self._dropped = self._dropped, None
        if self._finishing:
            self._done()
            return
        # Dropped by us: the reason that counts is ours (a queue whose node is down...), not
        # the 'Normal shutdown' of our own close, or the last line would not say what failed.
        why = dropped or str(reason) or type(reason).__name__
        if self._ready:  # we were at work: a fresh allowance for getting back to it
            self._ready = False
            self._deadline = time.monotonic() + self.connect_timeout
            self._last_reason = why
        self._retry_later(f"{self._prefix()}connection to {mask_url(self.url)} lost ({why})")
