"""Frames on the wire, both ways: our connections write at once, a small message's frames in one
``send()`` (``EagerWriteConnection``, what broker/connection.py's ``BrokerSession`` opens), and
a publisher confirm tells which of the messages in flight it settles (``settled_tags``)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import pika


class EagerWriteConnection(pika.SelectConnection):
    """pika's SelectConnection, writing at once and a small message in one ``send()``.

    pika queues what a channel writes (a publish's method, header and body frames as three
    buffers; an ack) and asks the I/O loop to watch the socket for writability; on the loop's
    next turn the transport sends each buffer with a ``send()`` of its own. A zero-work task
    pays that twice between its delivery and the next one (its record out, its ack out): an
    extra ``epoll_wait``, two ``epoll_ctl`` to watch and unwatch, and, with TCP_NODELAY (pika's
    default), three segments and three wake-ups of the broker for every record. Here a small
    message's frames are joined, and what pika hands the transport goes out with one
    ``send()`` on the spot (this runs on the I/O thread: every pika call does) while nothing
    waits before it; whatever the socket does not take now is buffered for the loop as before,
    and a socket error is left for the loop's own send to meet and report as pika does. TLS
    keeps pika's path (its writes may need a read first). Issue 29, item 5: bench/peers.md.

    Only small messages are joined: the transport re-slices a buffer the socket took only part
    of, so one big buffer would be copied again at every partial send. The counters pika keeps
    are kept the same."""

    JOIN_AT_MOST = 64 * 1024  # bytes: a record group, a copy of a task, an event batch

    def _output_marshaled_frames(self, marshaled_frames: Sequence[bytes]) -> None:
        if len(marshaled_frames) < 2 or \
                sum(map(len, marshaled_frames)) > self.JOIN_AT_MOST:
            super()._output_marshaled_frames(marshaled_frames)
            return
        joined = b"".join(marshaled_frames)
        self.bytes_sent += len(joined)
        self.frames_sent += len(marshaled_frames)
        self._adapter_emit_data(joined)

    def _adapter_emit_data(self, data: bytes) -> None:
        transport = self._transport
        sock = getattr(transport, "_sock", None)
        if sock is None or hasattr(transport, "_ssl_writable_action") \
                or getattr(transport, "_state", None) != getattr(transport, "_STATE_ACTIVE", 1) \
                or transport.get_write_buffer_size():
            super()._adapter_emit_data(data)  # TLS, not yet or no longer open, or a queue
            return
        try:
            sent = sock.send(data)
        except OSError:  # would block (buffered below), or broken: the loop's send says so
            sent = 0
        if sent < len(data):
            super()._adapter_emit_data(data[sent:] if sent else data)


def settled_tags(frame: pika.frame.Method, pending: Mapping[int, object]) -> tuple[bool, list[int]]:
    """(acked, tags) of a publisher confirm: which of the *pending* delivery tags it settles.
    One Basic.Ack/Nack with ``multiple`` settles every pending tag up to its own; *pending* is
    kept in publishing order, so the scan stops at the first later tag."""
    method = frame.method
    acked = isinstance(method, pika.spec.Basic.Ack)
    if method.multiple:
        return acked, list(itertools.takewhile(lambda tag: tag <= method.delivery_tag, pending))
    return acked, [method.delivery_tag] if method.delivery_tag in pending else []
