"""Write what pika has buffered for a connection now, not on the I/O loop's next turn.

pika's ``basic_publish`` / ``basic_ack`` only buffer their frames and ask the loop to watch
the socket for writability; the frames leave on the loop's next turn (one more ``epoll_wait``
and its dispatch). A zero-work task pays that twice between its delivery and the next one
(its record out, its ack out): at one slot, every microsecond of it is latency that nothing
else hides. ``send_now`` runs the transport's own writable handler at once instead, on the
I/O thread (the only thread that may call it): the same code the loop would run, sooner. It
sends what the socket takes and leaves the rest to the loop; a socket error aborts the
connection the way the loop would (pika reports the loss from the loop, never from inside
this call). A pika without these internals is left alone: its loop sends as before.
"""

from __future__ import annotations


def send_now(channel: object) -> None:
    """Flush the write buffer of *channel*'s connection now (on the I/O thread; a no-op if
    nothing waits, or for a channel with no pika connection behind it)."""
    connection = getattr(channel, "connection", None)
    transport = getattr(connection, "_transport", None)
    if hasattr(transport, "_ssl_writable_action"):
        return  # TLS: its writable handler may read (a renegotiation): left to the loop
    writable = getattr(transport, "_on_socket_writable", None)
    size = getattr(transport, "get_write_buffer_size", None)
    if writable is None or size is None or not size():
        return
    writable()
