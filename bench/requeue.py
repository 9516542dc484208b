#!/usr/bin/env python3
"""requeue-dead at scale: N tasks in <queue>.dead (quorum, as the worker makes it) moved back
by ``task_control.py requeue-dead``, in a process of its own so that its peak memory is its
own. Goal (issue 17): memory flat from 10k to 1M.

    make bench-requeue                      # 10k and 1M; writes bench/requeue.md
    python bench/requeue.py --sizes 10000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pika

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def fill_dead(queue: str, count: int, logs: Path) -> None:
    """The queues as a worker makes them, then *count* dead tasks, published in batches."""
    env = {**os.environ, "TASKQUEUE_LOG_DIR": str(logs)}
    subprocess.run([sys.executable, str(ROOT / "listening_worker.py"), "--queue", queue,
                    "--exit-when-idle", "0.2", "--no-events"], env=env, check=True,
                   stdout=subprocess.DEVNULL, cwd=ROOT)
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    properties = pika.BasicProperties(delivery_mode=2, headers={
        "x-retries": 3, "x-death-reason": "failed 4 times; last: timed out after 60 s"})
    for n in range(count):
        channel.basic_publish("", queue + ".dead", f"task {n}...".encode(), properties)
    while channel.queue_declare(queue + ".dead", passive=True).method.message_count < count:
        time.sleep(0.2)  # all there before the clock starts
    connection.close()


def requeue_once(queue: str) -> dict:
    """In this process: the mover's time and peak RSS."""
    from taskqueue.broker.config import BrokerSettings, QueueSpec
    from taskqueue.control.requeue import DeadFilter, DeadMover
    from taskqueue.log import get_logger

    started = time.perf_counter()
    mover = DeadMover(BrokerSettings([URL]), QueueSpec(queue), get_logger("bench", "WARNING"),
                      DeadFilter())
    mover.run()
    return {"seconds": time.perf_counter() - started, "moved": mover.stats.moved,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(count: int) -> dict:
    queue = f"bench.requeue.{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory() as logs:
        try:
            fill_dead(queue, count, Path(logs))
            out = subprocess.run([sys.executable, __file__, "--one", queue], check=True,
                                 capture_output=True, text=True, cwd=ROOT,
                                 env={**os.environ, "TASKQUEUE_LOG_DIR": logs})
            result = json.loads(out.stdout)
        finally:
            connection = pika.BlockingConnection(pika.URLParameters(URL))
            for suffix in ("", ".retry", ".dead", ".events", ".control"):
                connection.channel().queue_delete(queue + suffix)
            connection.close()
    result["count"] = count
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--write", action="store_true", help="write bench/requeue.md")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(requeue_once(args.one)))
        return 0
    rows = []
    for count in (int(size) for size in args.sizes.split(",")):
        result = measure(count)
        assert result["moved"] == count, result
        rows.append(f"| requeue-dead, {count:,} dead tasks | {result['seconds']:.1f} s | "
                    f"{count / result['seconds']:,.0f} tasks/s | {result['peak_mb']:.0f} MB |")
        print(rows[-1], flush=True)
    text = "\n".join(["# requeue-dead at scale (bench/requeue.py)", "",
                      f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores, "
                      "RabbitMQ on 127.0.0.1, quorum queues.", "",
                      "| what | time | rate | peak memory |", "|---|---|---|---|", *rows]) + "\n"
    if args.write:
        (ROOT / "bench" / "requeue.md").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
