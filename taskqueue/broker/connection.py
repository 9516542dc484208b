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

import contextlib
import errno
import itertools
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from urllib.parse import urlsplit

import pika
import pika.exceptions as pe
from pika.adapters.select_connection import IOLoop
from pika.adapters.utils.connection_workflow import AMQPConnectorStackTimeout
from pika.channel import Channel

from taskqueue.broker.config import BrokerSettings, QueueSpec, TlsOptions, mask_url, url_user
from taskqueue.broker.topology import HomeNodeDown, QueueSetup, Topology
from taskqueue.errors import EXIT_BAD_INPUT, EXIT_REFUSED, EXIT_UNREACHABLE, UserError

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


def connection_parameters(url: str, settings: BrokerSettings) -> pika.URLParameters:
    """pika parameters for *url*, with TLS verification on for amqps://."""
    params = pika.URLParameters(url)
    params.connection_attempts = 1  # BrokerSession does the retrying, with backoff and failover
    params.socket_timeout = min(10.0, max(1.0, settings.connect_timeout))
    params.blocked_connection_timeout = None  # a resource alarm is waited out, never a reason
    if settings.client_name:                  # to drop the connection
        params.client_properties = {"connection_name": settings.client_name}
    if settings.heartbeat is not None:
        # The lower of the broker's proposal and ours (pika would take ours as it is).
        ours = settings.heartbeat
        params.heartbeat = lambda _connection, proposed: min(proposed, ours) if proposed else ours
    if urlsplit(url).scheme == "amqps":
        params.ssl_options = pika.SSLOptions(tls_context(settings.tls), urlsplit(url).hostname)
    return params


def tls_context(tls: TlsOptions) -> ssl.SSLContext:
    """A verifying TLS context: the system CAs, or ``--ca-file``; a client certificate if given."""
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise UserError(f"cannot load TLS files ({exc}); check --ca-file, --cert-file and "
                        "--key-file", EXIT_BAD_INPUT) from None
    return context


# OpenSSL's X509_V_ERR_* codes (x509_vfy.h), as ssl.SSLCertVerificationError.verify_code.
UNTRUSTED_ISSUER_CODES = frozenset({2, 18, 19, 20, 21, 27})  # no CA we trust signed it
EXPIRY_CODES = frozenset({9, 10})                            # not yet valid, expired
NAME_MISMATCH_CODES = frozenset({62, 64})                    # host name, IP address
# The checks of ssl.VERIFY_X509_STRICT, on by default since Python 3.13: a CA without
# keyUsage, basicConstraints not critical, a missing key identifier... (OpenSSL 3.0+).
STRICT_RULE_CODES = range(79, 95)
# OS errors are told by type and errno, never by their text: Windows words them differently
# ("No connection could be made because the target machine actively refused it"). Windows'
# WSA codes are listed too, for an OSError that lost its subclass on the way.
REFUSED_ERRNOS = frozenset({errno.ECONNREFUSED, 10061})                    # WSAECONNREFUSED
TIMED_OUT_ERRNOS = frozenset({errno.ETIMEDOUT, 10060})                     # WSAETIMEDOUT
UNREACHABLE_ERRNOS = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH,
                                10065, 10051})           # WSAEHOSTUNREACH, WSAENETUNREACH
WRAPPER_DEPTH = 8  # pika nests its errors three deep; the bound only guards against a cycle


def inner_error(exc: BaseException) -> BaseException | None:
    """The error that pika's wrapper *exc* carries, or None: an ``AMQPConnector*Error`` has it
    in ``exception``, ``AMQPConnectionWorkflowFailed`` one per address tried in
    ``exceptions`` (the last counts), and ``AMQPConnectionError`` in its first argument."""
    wrapped = getattr(exc, "exception", None)
    if isinstance(wrapped, BaseException):
        return wrapped
    several = getattr(exc, "exceptions", None)
    if several and isinstance(several[-1], BaseException):
        return several[-1]
    if isinstance(exc, pe.AMQPConnectionError) and exc.args \
            and isinstance(exc.args[0], BaseException):
        return exc.args[0]
    return None


def root_cause(exc: BaseException) -> BaseException:
    """The socket, TLS or AMQP error under pika's wrappers (*exc* itself when unwrapped)."""
    for _ in range(WRAPPER_DEPTH):
        inner = inner_error(exc)
        if inner is None:
            break
        exc = inner
    return exc


def explain_certificate_error(error: BaseException, url: str) -> str:
    """One line for a broker certificate that failed verification: OpenSSL's own reason
    (``verify_message``: "CA cert does not include key usage extension", "Hostname
    mismatch...", "certificate has expired"...) and the fix that reason calls for."""
    code = getattr(error, "verify_code", None)
    reason = getattr(error, "verify_message", None) or str(error)
    head = f"the TLS certificate of {mask_url(url)} could not be verified ({reason})"
    if code in UNTRUSTED_ISSUER_CODES:
        return (f"{head}: no CA we trust signed it; pass the CA that signed the broker's "
                "certificate with --ca-file")
    if code in NAME_MISMATCH_CODES:
        host = urlsplit(url).hostname
        return (f"{head}: it is not made out to {host!r}; use a host name it lists in --url, "
                f"or give the broker a certificate for {host!r}")
    if code in EXPIRY_CODES:
        return f"{head}: renew the certificate, or set the clock right here or on the broker"
    if code in STRICT_RULE_CODES:
        return (f"{head}: the certificate or its CA breaks a rule of strict X.509 checking (on "
                "by default since Python 3.13); re-issue it to meet that rule")
    return f"{head}; check the broker's certificate and the CA given with --ca-file"


def explain_os_error(error: BaseException) -> str | None:
    """The reason for a socket error worth retrying, by type and errno (any OS), else None."""
    if isinstance(error, socket.gaierror):  # -2 "Name or service not known"; 11001 on Windows
        return "host name not found"
    if not isinstance(error, OSError):
        return None
    if isinstance(error, ConnectionRefusedError) or error.errno in REFUSED_ERRNOS:
        return "connection refused (is RabbitMQ running on that host and port?)"
    if isinstance(error, TimeoutError) or error.errno in TIMED_OUT_ERRNOS:
        return "timed out"
    if error.errno in UNREACHABLE_ERRNOS:
        return "no route to the host (is the network up, or a firewall in the way?)"
    return None


def explain_connect_error(exc: BaseException, url: str) -> tuple[bool, str]:
    """(fatal, reason) for a failed connection attempt. Fatal errors are the broker saying no,
    which waiting will not change; the others (refused, timeout, reset) are worth retrying."""
    where = mask_url(url)
    cause = root_cause(exc)
    text = repr(exc)
    if isinstance(cause, (pe.ProbableAuthenticationError, pe.AuthenticationError)):
        return True, (f"RabbitMQ at {where} refused the login of user {url_user(url)!r}; check the "
                      "user and password in --url / RABBITMQ_URL (guest works only on localhost)")
    if isinstance(cause, pe.ProbableAccessDeniedError):
        vhost = urlsplit(url).path.lstrip("/") or "%2F"
        return True, (f"RabbitMQ at {where} refused access to virtual host {vhost!r} (it does not "
                      "exist or the user has no permission); create it with 'rabbitmqctl add_vhost'"
                      " and 'rabbitmqctl set_permissions', or fix the URL")
    if isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
        return True, explain_certificate_error(cause, url)
    # The TLS alerts below are OpenSSL's words, the same on every OS (Windows' CPython bundles
    # OpenSSL too).
    if "CERTIFICATE_REQUIRED" in text or "certificate required" in text:
        return True, (f"the broker at {where} wants a client certificate; pass --cert-file and "
                      "--key-file (a certificate signed by a CA the broker trusts)")
    if "BAD_CERTIFICATE" in text or "UNKNOWN_CA" in text or "bad certificate" in text:
        return True, (f"the broker at {where} refused our client certificate (--cert-file); "
                      "use one signed by a CA the broker trusts")
    if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text:
        return True, (f"{where} does not speak TLS (a plain AMQP port?); use amqp:// or the "
                      "broker's TLS port (usually 5671)")
    if isinstance(cause, pe.IncompatibleProtocolError):
        if urlsplit(url).scheme == "amqps":
            # Under load the broker's TLS alert can be lost to the reset that follows it.
            return False, ("the connection closed right after the TLS handshake (if the broker "
                           "wants a client certificate, pass --cert-file and --key-file)")
        return False, "the port answered but not as an AMQP broker (wrong port, or TLS port?)"
    os_reason = explain_os_error(cause)
    if os_reason:
        return False, os_reason
    if isinstance(cause, AMQPConnectorStackTimeout):  # pika's own deadline for the handshake
        return False, "timed out"
    return False, text[:200]


def explain_channel_error(exc: BaseException, queue: str) -> UserError | None:
    """A UserError for a channel the broker closed because of something the user must fix,
    else None (a transient loss worth reconnecting for)."""
    if isinstance(exc, UserError):
        return exc
    if not isinstance(exc, pe.ChannelClosedByBroker):
        return None
    if exc.reply_code == 406 and "inequivalent arg" in exc.reply_text:
        return UserError(
            f"queue {queue!r} already exists with other arguments "
            f"({exc.reply_text.split(' - ')[-1]});"
            f" use another --queue, match its --queue-type, or delete it with "
            f"'rabbitmqctl delete_queue {queue}' if its messages can go", EXIT_REFUSED)
    if exc.reply_code == 403:
        return UserError(f"RabbitMQ refused an operation on queue {queue!r}: {exc.reply_text}; "
                         "grant the user configure/write/read permissions on the vhost",
                         EXIT_REFUSED)
    if exc.reply_code == 405:
        return UserError(f"queue {queue!r} is locked by another connection ({exc.reply_text})",
                         EXIT_REFUSED)
    return None


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
        self._connection = pika.SelectConnection(
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


def open_blocking(settings: BrokerSettings) -> pika.BlockingConnection:
    """A plain blocking connection to the first URL that answers, for short jobs such as the
    report (no reconnect loop: a failure is reported, the user runs it again)."""
    return open_blocking_at(settings)[0]


def open_blocking_at(settings: BrokerSettings) -> tuple[pika.BlockingConnection, str]:
    """``open_blocking``, and the URL that answered."""
    reasons = []
    for url in settings.urls:
        try:
            return pika.BlockingConnection(connection_parameters(url, settings)), url
        except pe.AMQPError as exc:
            fatal, reason = explain_connect_error(exc, url)
            if fatal:
                raise UserError(reason, EXIT_REFUSED) from None
            reasons.append(f"{mask_url(url)}: {reason}")
    raise UserError(f"no RabbitMQ broker answered ({'; '.join(reasons)}); start the broker or "
                    "check --url", EXIT_UNREACHABLE)


class NoConfirm(Exception):
    """A confirmed write was not confirmed in time: the node cannot reach the majority of
    the queue's replicas (a network partition leaves it open and silent)."""


@contextlib.contextmanager
def confirmed_within(connection: pika.BlockingConnection, seconds: float) -> Iterator[None]:
    """Within the block, a blocking call that waits longer than *seconds* (a confirm that
    never comes) ends in ``NoConfirm``: a timer thread shuts the connection's socket, the
    one way into a blocking pika call (closing a socket is safe from any thread)."""
    fired = threading.Event()

    def cut() -> None:
        fired.set()
        sock = getattr(getattr(connection._impl, "_transport", None), "_sock", None)
        with contextlib.suppress(OSError, AttributeError):
            if sock is not None:  # no socket (pika's internals changed, or it is gone)
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(seconds, cut)
    timer.daemon = True
    timer.start()
    try:
        yield
    except (pe.AMQPError, OSError):
        if fired.is_set():
            raise NoConfirm(f"no confirm in {seconds:.0f} s") from None
        raise
    finally:
        timer.cancel()


def settled_tags(frame: pika.frame.Method, pending: Mapping[int, object]) -> tuple[bool, list[int]]:
    """(acked, tags) of a publisher confirm: which of the *pending* delivery tags it settles.
    One Basic.Ack/Nack with ``multiple`` settles every pending tag up to its own; *pending* is
    kept in publishing order, so the scan stops at the first later tag."""
    method = frame.method
    acked = isinstance(method, pika.spec.Basic.Ack)
    if method.multiple:
        return acked, list(itertools.takewhile(lambda tag: tag <= method.delivery_tag, pending))
    return acked, [method.delivery_tag] if method.delivery_tag in pending else []
