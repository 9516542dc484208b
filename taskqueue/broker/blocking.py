"""Blocking connections for short jobs (the report, task_control.py, the web view's reader):
the first URL that answers, and a bound on a confirm that never comes."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pika
import pika.exceptions as pe

from taskqueue.broker.config import BrokerSettings, mask_url
from taskqueue.broker.explain import explain_connect_error
from taskqueue.broker.params import connection_parameters
from taskqueue.errors import EXIT_REFUSED, EXIT_UNREACHABLE, UserError


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
