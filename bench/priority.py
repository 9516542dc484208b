#!/usr/bin/env python3
"""Urgent tasks behind a backlog (issue 31, item 4): N normal tasks wait, workers start on
them, then H high ones are published (``submit(..., priority="high")``). Goal: every high task
starts before the next 100 normal ones (1,000 normal, 50 high).

    python bench/priority.py                       # 1,000 + 50, 4 workers x 4 slots
    python bench/priority.py --normal 200 --high 20 --workers 2 --slots 2

Prints how many normal tasks started while the high ones were published or waiting, read from
the results record's start times: after the publishing began (the issue's measure), and after
the first high task started (the design's bound: one per slot at most, docs/queue-types.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pika

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from taskqueue.api import submit  # noqa: E402
from taskqueue.broker.config import BrokerSettings, QueueSpec  # noqa: E402
from taskqueue.results.history import History  # noqa: E402

URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def start_workers(queue: str, count: int, slots: int, seconds: float,
                  logs: Path) -> list[subprocess.Popen]:
    env = {**os.environ, "TASKQUEUE_LOG_DIR": str(logs)}
    return [subprocess.Popen([sys.executable, str(ROOT / "listening_worker.py"), "--queue", queue,
                              "--name", f"w{n}", "--concurrency", str(slots),
                              "--seconds-per-dot", str(seconds), "--exit-when-idle", "2",
                              "--no-events"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
            for n in range(1, count + 1)]


def ready(queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


def starts(queue: str, run: str, directory: Path) -> list[float]:
    history = History(BrokerSettings([URL]), QueueSpec(queue), directory)
    return sorted(float(r["started"]) for r in history.run_records(run)()
                  if r.get("kind") in (None, "task") and r.get("outcome") == "done")


def delete_all(queue: str) -> None:
    spec = QueueSpec(queue)
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    try:
        for name in spec.everything:
            channel = connection.channel()
            try:
                channel.queue_delete(name)
                channel.close()
            except pika.exceptions.ChannelClosedByBroker:
                pass
        connection.channel().exchange_delete(spec.exchange)
    finally:
        connection.close()


def measure(args: argparse.Namespace, queue: str, logs: Path) -> dict:
    normal_run = submit([f"n{n}." for n in range(1, args.normal + 1)], queue, URL).run_id
    workers = start_workers(queue, args.workers, args.slots, args.seconds, logs)
    while ready(queue) > args.normal - 2 * args.workers * args.slots:
        time.sleep(0.02)  # the workers are into the backlog
    began = time.time()
    high_run = submit([f"h{n}." for n in range(1, args.high + 1)], queue, URL,
                      priority="high").run_id
    confirmed = time.time()
    for worker in workers:
        worker.wait(timeout=600)
    normal = starts(queue, normal_run, logs / "n")
    high = starts(queue, high_run, logs / "h")
    last = high[-1]
    return {"normal": len(normal), "high": len(high),
            "after_publishing_began": sum(began < s < last for s in normal),
            "after_confirmed": sum(confirmed < s < last for s in normal),
            "after_first_high": sum(high[0] < s < last for s in normal),
            "left_behind": sum(s > last for s in normal),
            "high_waited": last - confirmed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--normal", type=int, default=1000)
    parser.add_argument("--high", type=int, default=50)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=0.1, help="each task's work")
    args = parser.parse_args()
    queue = f"bench.priority.{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="bench-priority-") as directory:
        try:
            result = measure(args, queue, Path(directory))
        finally:
            delete_all(queue)
    print(f"{args.normal} normal waiting, {args.high} high published after, {args.workers} "
          f"workers x {args.slots} slots, {args.seconds} s a task: normal tasks started before "
          f"the last high one: {result['after_publishing_began']} after the publishing began, "
          f"{result['after_confirmed']} after it was confirmed, {result['after_first_high']} "
          f"after the first high one started (goal: fewer than {2 * args.high}); the last high "
          f"one started {result['high_waited']:.2f} s after the confirm, "
          f"{result['left_behind']} normal ones after it")
    ok = result["high"] == args.high and result["after_publishing_began"] < 2 * args.high
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
