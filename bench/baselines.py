"""The naive baselines the benchmark compares against: a few lines each, as people write them
from the RabbitMQ tutorial. Each returns the seconds it took."""

from __future__ import annotations

import time

import pika

PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)


def rows(path: str):
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield line.rstrip("\n")


def publish_confirm_each(url: str, queue: str, path: str) -> float:
    """BlockingConnection with confirm_delivery(): one round trip per message."""
    return _publish_rows(url, queue, path, confirm=True)


def publish_unconfirmed(url: str, queue: str, path: str) -> float:
    """BlockingConnection, no confirms: fast, but nothing says the broker has the messages."""
    return _publish_rows(url, queue, path, confirm=False)


def _publish_rows(url: str, queue: str, path: str, confirm: bool) -> float:
    started = time.perf_counter()
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_declare(queue, durable=True)
    if confirm:
        channel.confirm_delivery()
    for text in rows(path):
        channel.basic_publish("", queue, text.encode(), PERSISTENT)
    connection.close()
    return time.perf_counter() - started


def bare_worker(url: str, queue: str, count: int, say: bool = False) -> float:
    """The tutorial's worker without the sleep: prefetch 1, manual ack, stop after *count*.
    With *say*, it also prints its two lines per task, as the tutorial's worker.py does."""
    started = time.perf_counter()
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_declare(queue, durable=True)
    channel.basic_qos(prefetch_count=1)
    done = 0

    def callback(ch, method, _properties, body) -> None:
        nonlocal done
        if say:
            print(f" [x] Received {body.decode()}")
            print(" [x] Done")
        ch.basic_ack(delivery_tag=method.delivery_tag)
        done += 1
        if done == count:
            ch.stop_consuming()

    channel.basic_consume(queue, callback)
    channel.start_consuming()
    connection.close()
    return time.perf_counter() - started
