"""Dramatiq and Celery apps for bench/peers.py. They run only in the bench's own venv
(bench/out/peers-venv, made by bench/peers.py from PyPI): neither is a dependency of taskqueue.

    PEERS_SYSTEM=dramatiq dramatiq peer_apps --processes 1 --threads N     # the workers
    PEERS_SYSTEM=celery celery -A peer_apps worker --pool threads --concurrency N
    python peer_apps.py fill COUNT DOTS      # COUNT tasks, DOTS '.' each, into PEERS_QUEUE
    python peer_apps.py results              # how many results are stored (then deleted)

The work is the same as the worker's simulated work: PEERS_SECONDS_PER_DOT per '.' in the
task's text, nothing at all without one; the task returns None, which each system stores as
the task's result (Dramatiq: the Results middleware, Celery: its result backend), both in
Redis under a prefix of this run's own (PEERS_PREFIX), so that counting and deleting them
touches nothing else.
"""

from __future__ import annotations

import os
import sys
import time

SYSTEM = os.environ.get("PEERS_SYSTEM", "dramatiq")
QUEUE = os.environ.get("PEERS_QUEUE", "bench.peers")
PREFIX = os.environ.get("PEERS_PREFIX", "bench-peers")
SECONDS_PER_DOT = float(os.environ.get("PEERS_SECONDS_PER_DOT", "0.01"))
BROKER_URL = os.environ.get("BENCH_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
REDIS_URL = os.environ.get("PEERS_REDIS", "redis://127.0.0.1:6379/0")


def work(text: str) -> None:
    seconds = text.count(".") * SECONDS_PER_DOT
    if seconds > 0:
        time.sleep(seconds)


if SYSTEM == "dramatiq":
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker
    from dramatiq.results import Results
    from dramatiq.results.backends.redis import RedisBackend

    backend = RedisBackend(url=REDIS_URL, namespace=PREFIX, use_namespace_prefix_keys=True)
    broker = RabbitmqBroker(url=BROKER_URL)
    broker.add_middleware(Results(backend=backend))
    dramatiq.set_broker(broker)

    @dramatiq.actor(queue_name=QUEUE, store_results=True, max_retries=0)
    def peer_task(text: str) -> None:
        work(text)

    def send(text: str) -> None:
        peer_task.send(text)
else:
    from celery import Celery

    app = Celery("peer_apps", broker=BROKER_URL, backend=REDIS_URL)
    app.conf.update(
        task_default_queue=QUEUE, task_acks_late=True, worker_prefetch_multiplier=1,
        result_backend_transport_options={"global_keyprefix": f"{PREFIX}:"},
        worker_hijack_root_logger=False, broker_connection_retry_on_startup=True,
        worker_enable_remote_control=False, task_ignore_result=False)

    @app.task(name="peer_task")
    def celery_task(text: str) -> None:
        work(text)

    def send(text: str) -> None:
        celery_task.apply_async((text,))


def stored_results() -> int:
    """How many results this run's prefix holds in Redis; they are deleted as they are counted."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    count = 0
    for key in client.scan_iter(match=f"{PREFIX}*", count=1000):
        count += 1
        client.delete(key)
    return count


def main() -> int:
    if sys.argv[1:2] == ["fill"]:
        count, dots = int(sys.argv[2]), int(sys.argv[3])
        for number in range(count):
            send(f"task {number}{'.' * dots}")
        if SYSTEM == "dramatiq":
            broker.close()
        print(f"{SYSTEM}: {count} tasks sent to {QUEUE}")
        return 0
    if sys.argv[1:2] == ["results"]:
        print(stored_results())
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
