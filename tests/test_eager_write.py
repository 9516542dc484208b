"""One write per small message (broker/frames.py, EagerWriteConnection), on a real broker.

pika hands its transport a publish's method, header and body frames as three buffers, each
sent with a send() of its own; ours joins a small message's frames into one. A big message
keeps pika's frames (one buffer re-sliced at every partial send would be copied again and
again). Either way the broker must get exactly the bytes published.
"""

from __future__ import annotations

import pika
from pika.adapters.select_connection import IOLoop

from taskqueue.broker.frames import EagerWriteConnection
from tests.helpers import MAIN_URL

SMALL = b'[{"kind": "task", "outcome": "done"}]'
BIG = bytes(range(256)) * 4096  # 1 MiB: several body frames, past JOIN_AT_MOST


def publish_through(connection_class: type[pika.SelectConnection], queue: str
                    ) -> tuple[list[int], int]:
    """Publish SMALL then BIG with confirms; (buffers handed to the transport per message,
    bytes those buffers held)."""
    loop = IOLoop()
    writes: list[int] = []
    written = [0]
    failures: list[object] = []

    def on_open(connection: pika.SelectConnection) -> None:
        emit = connection._adapter_emit_data

        def counting(data: bytes) -> None:
            if writes:  # (not the channel's own frames, before the first publish)
                writes[-1] += 1
                written[0] += len(data)
            emit(data)

        connection._adapter_emit_data = counting  # type: ignore[method-assign]
        connection.channel(on_open_callback=on_channel)

    def on_channel(channel: pika.channel.Channel) -> None:
        channel.queue_declare(queue, callback=lambda _frame: channel.confirm_delivery(
            ack_nack_callback=on_confirm, callback=lambda _frame: send(channel)))

    def send(channel: pika.channel.Channel) -> None:
        for body in (SMALL, BIG):
            writes.append(0)
            channel.basic_publish("", queue, body)

    confirmed: list[bool] = []

    def on_confirm(frame: pika.frame.Method) -> None:
        confirmed.append(isinstance(frame.method, pika.spec.Basic.Ack))
        if len(confirmed) == 2 or frame.method.multiple:
            connection.close()

    connection = connection_class(
        pika.URLParameters(MAIN_URL), on_open_callback=on_open,
        on_open_error_callback=lambda _c, error: (failures.append(error), loop.stop()),
        on_close_callback=lambda _c, _reason: loop.stop(), custom_ioloop=loop)
    loop.call_later(20, loop.stop)  # a broker that never answers fails the test, not the run
    loop.start()
    assert not failures, failures
    assert confirmed and all(confirmed), confirmed
    return writes, written[0]


def received(queue: str) -> list[bytes]:
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    try:
        channel, bodies = connection.channel(), []
        while True:
            method, _properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return bodies
            bodies.append(body)
    finally:
        connection.close()


def test_a_small_message_is_one_write_and_a_big_one_keeps_its_frames(queue):
    writes, written = publish_through(EagerWriteConnection, queue)
    assert writes[0] == 1  # method + header + body: one buffer, one send
    assert writes[1] >= 3  # method, header and the body's frames, as pika makes them
    assert written > len(SMALL) + len(BIG)  # the bodies and their frames' headers, no less
    assert received(queue) == [SMALL, BIG]


def test_plain_pika_writes_a_small_message_as_three_buffers(queue):
    """What the subclass is for: without it, the same small message is three writes."""
    writes, _written = publish_through(pika.SelectConnection, queue)
    assert writes[0] == 3
    assert received(queue) == [SMALL, BIG]
