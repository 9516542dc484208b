"""A fleet of real worker processes on one queue of the local broker, for the benchmarks that
read what happened from the results records (bench/priority.py, bench/ratelimit.py): start the
workers, look at the queue, read a run's start times, delete the queue and its companions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pika

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from taskqueue.broker.config import BrokerSettings, QueueSpec  # noqa: E402
from taskqueue.results.history import History  # noqa: E402

URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def start_workers(queue: str, count: int, slots: int, seconds: float, logs: Path,
                  idle: float = 2) -> list[subprocess.Popen]:
    """*count* dot workers of *slots* slots each (*seconds* a dot), gone after *idle* s idle."""
    env = {**os.environ, "TASKQUEUE_LOG_DIR": str(logs)}
    return [subprocess.Popen([sys.executable, str(ROOT / "listening_worker.py"), "--queue", queue,
                              "--name", f"w{n}", "--concurrency", str(slots),
                              "--seconds-per-dot", str(seconds), "--exit-when-idle", str(idle),
                              "--no-events"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
            for n in range(1, count + 1)]


def ready(queue: str) -> int:
    """The tasks waiting in *queue* (a passive declare: exact, even for a quorum queue)."""
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


def done_records(queue: str, run: str, directory: Path) -> list[dict]:
    """The run's task records whose outcome is done."""
    history = History(BrokerSettings([URL]), QueueSpec(queue), directory)
    return [r for r in history.run_records(run)()
            if r.get("kind") in (None, "task") and r.get("outcome") == "done"]


def starts(queue: str, run: str, directory: Path) -> list[float]:
    """When each of the run's done tasks started, in order."""
    return sorted(float(r["started"]) for r in done_records(queue, run, directory))


def delete_all(queue: str) -> None:
    """*queue*, every companion it may have and its exchange."""
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
