#!/usr/bin/env python3
"""The minimal loop that records before it acks, for bench/peers.py (pika only).

    python bench/peer_minimal.py --queue Q --slots N --seconds-per-dot 0.01

Each slot is one thread with a connection of its own (pika's blocking connections are not
thread-safe), one consuming channel with prefetch 1 and one publishing channel in confirm mode:
take a task, work (``seconds-per-dot`` per '.' in its text; none at all without a '.'), publish
a JSON record of the attempt to the stream ``<queue>.results``, wait for the broker's confirm,
ack. N slots are N such loops side by side: together they hold at most N unacked tasks, like a
worker with prefetch = N, and nothing is shared or batched between them (that is what makes
the loop minimal). A slot that gets no task for ``--exit-when-idle`` seconds ends; the program
exits 0 when every slot has, printing how many tasks were done.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time

import pika

URL = os.environ.get("BENCH_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
RECORD_PROPERTIES = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent,
                                         content_type="application/json")


def run_slot(name: str, queue: str, seconds_per_dot: float, idle: float,
             done: list[int], failures: list[str]) -> None:
    try:
        connection = pika.BlockingConnection(pika.URLParameters(URL))
        consuming, publishing = connection.channel(), connection.channel()
        consuming.basic_qos(prefetch_count=1)
        publishing.confirm_delivery()  # basic_publish now returns once the broker confirmed
        results, host, count = f"{queue}.results", socket.gethostname(), 0
        for method, properties, body in consuming.consume(queue, inactivity_timeout=idle):
            if method is None:
                break  # idle: the queue is drained
            started = time.time()
            text = body.decode("utf-8", "replace")
            seconds = text.count(".") * seconds_per_dot
            if seconds > 0:
                time.sleep(seconds)
            record = {"kind": "task", "worker": name, "host": host, "task": text,
                      "message_id": properties.message_id, "outcome": "done",
                      "started": started, "seconds": time.time() - started, "result": None}
            publishing.basic_publish("", results, json.dumps([record]).encode(),
                                     RECORD_PROPERTIES, mandatory=True)
            consuming.basic_ack(method.delivery_tag)
            count += 1
        consuming.cancel()
        connection.close()
        done.append(count)
    except Exception as error:  # said by the main thread: the run then does not count
        failures.append(f"{name}: {error!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--seconds-per-dot", type=float, default=0.01)
    parser.add_argument("--exit-when-idle", type=float, default=2.0)
    args = parser.parse_args()
    setup = pika.BlockingConnection(pika.URLParameters(URL))
    try:  # the emitter may have made it (with its own arguments): use it as it is
        setup.channel().queue_declare(f"{args.queue}.results", passive=True)
    except pika.exceptions.ChannelClosedByBroker:
        setup.channel().queue_declare(f"{args.queue}.results", durable=True,
                                      arguments={"x-queue-type": "stream"})
    setup.close()
    done: list[int] = []
    failures: list[str] = []
    threads = [threading.Thread(target=run_slot, args=(
        f"minimal/{n}", args.queue, args.seconds_per_dot, args.exit_when_idle, done, failures))
        for n in range(1, args.slots + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for failure in failures:
        print(f"minimal loop: {failure}", file=sys.stderr)
    print(f"minimal loop: {sum(done)} done")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
