#!/usr/bin/env python3
"""The workers bench/scale.py runs, real or simulated.

Simulated workers: the product's own ``TaskConsumer`` (built as taskqueue/commands/worker.py
builds it, one slot of simulated work), each with its own two connections (consuming and
publishing), so that what the broker sees per task is exactly the real worker's wire traffic.
``SIM_PER_PROCESS`` of them share one process and one pika I/O loop (``Fleet``). As a script,
one process of them:

    python bench/scale_sim.py --tree DIR --url URL --queue Q --prefix NAME --count K

(DIR: the product tree to import, a ``git archive`` of the commit measured.) It prints
``first`` once its first instance is subscribed and ``started`` once every instance is; reads
one line on stdin (any: "stop"), asks every instance to stop (as a first Ctrl+C would), waits
for them, and prints one JSON line: ``{"workers": K, "done": tasks done, "tail_read":
messages the tails read, "threads": live threads, "stuck": instances not stopped, "failed":
instances that gave up, "reconnects": connections opened again, "up_seconds": [each
instance's seconds from its start to subscribed]}``.

Why one loop, not a thread per instance (as before): measured on this 2-core machine
(bench/scale.md, "Start-up"), an idle instance in a thread of its own costs 1.48 ms of client
CPU a second (its loop wakes for its 0.1 s signal poll, which an instance in a thread never
needs, and its 0.25 s beat, each wake-up taking the GIL from the others); 1,000 of them need
1.5 cores before the broker's 0.75 ms a second each, more than the machine has: the workers
started first kept the later ones from starting. On one loop an idle instance costs 0.47 ms.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script, too

from bench.scale_broker import BenchError

STOP_WAIT_SECONDS = 30.0
START_WAIT_SECONDS = 60.0  # for one instance to subscribe; then the next one starts anyway
SIM_PER_PROCESS = 100  # TaskConsumer instances per simulation process (one I/O loop)
# Instances of one process connecting and setting up at once. Each start is ~15 short-lived
# channels and two readings of streams, and ends with 0.5 s of listening to the control
# stream: a few at a time keep the loop and the broker busy without piling up handshakes
# (1,000 opened at once timed out: 374 gave up after 60 s).
STARTING_AT_ONCE = 3
HERE = Path(__file__).resolve()
NO_PROBES = "BENCH_SCALE_NO_PROBES"  # set: the instances never probe (reach.py), a diagnostic


def build(url: str, queue: str, name: str, log: logging.Logger):
    """As commands/worker.py does with its defaults: one slot, '.'-timed simulated work (the
    benchmark's tasks have no '.': instant, run on the I/O thread like the real worker's).
    Imported here: the tree measured is put on sys.path by main() first."""
    from taskqueue.broker.config import BrokerSettings, QueueSpec
    from taskqueue.worker.consumer import TaskConsumer, WorkerOptions
    from taskqueue.worker.work import SimulatedWork

    return TaskConsumer(BrokerSettings(urls=[url]), QueueSpec(name=queue), log,
                        WorkerOptions(name=name), [SimulatedWork(1.0)])


def subscribed(consumer) -> bool:
    """Consuming the task queue: ``phase`` (worker/phase.py) since 3399b81, ``state`` before."""
    now = getattr(consumer, "phase", None) or getattr(consumer, "state", None)
    return getattr(now, "name", "") == "CONSUMING"


def finished(consumer) -> bool:
    return bool(getattr(consumer, "_finished", False))


class Fleet:
    """*count* TaskConsumers on one pika I/O loop, run by one thread of this process. A
    TaskConsumer makes its own loop (``BrokerSession``: ``ioloop or IOLoop()``) and shares it
    with its outbox; here connection.py's ``IOLoop`` is this loop while they are made. The
    fleet runs and stops the loop itself (``owns_loop`` False: no signal poll either; a stop
    comes as ``request_stop``). Nothing on the wire changes: each instance keeps its own two
    connections, channels, beat, probes and snapshots."""

    def __init__(self, url: str, queue: str, names: list[str], log: logging.Logger) -> None:
        from pika.adapters.select_connection import IOLoop

        import taskqueue.broker.connection as connection

        self.loop, self.log = IOLoop(), log
        made = connection.IOLoop
        connection.IOLoop = lambda: self.loop  # type: ignore[misc, assignment]
        try:
            self.consumers = [build(url, queue, name, log) for name in names]
        finally:
            connection.IOLoop = made  # type: ignore[misc]
        for consumer in self.consumers:
            consumer.owns_loop = False
        self.thread = threading.Thread(target=self.loop.start, name="fleet loop", daemon=True)
        self.up_seconds: list[float] = []

    def start(self, on_first) -> None:
        """Start the instances, at most STARTING_AT_ONCE at a time, the first one alone
        (*on_first* once it is subscribed): on fresh names it makes the queues and streams,
        and an instance that finds a stream just declared and not yet running is refused
        ("does not have a replica on the local node", 406; the worker waits for it and tries
        again, as for a stream whose node is restarting)."""
        self.thread.start()
        pending, starting = list(self.consumers), []
        first = True
        while pending or starting:
            now = time.monotonic()
            for consumer, since in list(starting):
                if subscribed(consumer) or finished(consumer) \
                        or now - since > START_WAIT_SECONDS:
                    starting.remove((consumer, since))
                    if subscribed(consumer):
                        self.up_seconds.append(round(now - since, 3))
            if first and not starting and len(pending) < len(self.consumers):
                first = False  # subscribed, gave up or timed out: the others start now
                on_first()
            while pending and len(starting) < (1 if first else STARTING_AT_ONCE):
                consumer = pending.pop(0)
                self.loop.add_callback_threadsafe(consumer.start)
                starting.append((consumer, time.monotonic()))
            time.sleep(0.01)

    def stop(self) -> dict:
        peak_threads = threading.active_count()
        for consumer in self.consumers:
            self.loop.add_callback_threadsafe(consumer.request_stop)
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        while time.monotonic() < deadline and not all(map(finished, self.consumers)):
            time.sleep(0.05)
        self.loop.add_callback_threadsafe(self.loop.stop)
        self.thread.join(5)
        for consumer in self.consumers:
            if consumer.error is not None:
                self.log.error("[%s] failed: %s", consumer.options.name, consumer.error)
        return {"workers": len(self.consumers),
                "done": sum(c.stats.done for c in self.consumers),
                "tail_read": sum(getattr(c.tail, "messages_read", 0) for c in self.consumers),
                "threads": peak_threads,
                "stuck": sum(not finished(c) for c in self.consumers),
                "failed": sum(c.error is not None for c in self.consumers),
                "reconnects": sum(max(0, c.connections_made - 1)
                                  + max(0, c.outbox.connections_made - 1)
                                  for c in self.consumers),
                "up_seconds": self.up_seconds}


class Workers:
    """N workers: real processes, or TaskConsumer instances in a few simulation processes."""

    def __init__(self, kind: str, count: int, url: str, queue: str, prefix: str,
                 tmp: Path, tree: Path) -> None:
        self.kind, self.count, self.prefix = kind, count, prefix
        self.url, self.queue, self.tmp, self.tree = url, queue, tmp, tree
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        """Start them all; ``stop()`` ends those started, even if this raised."""
        count, url, queue, prefix, tmp, tree = (self.count, self.url, self.queue, self.prefix,
                                                self.tmp, self.tree)
        env = dict(os.environ, TASKQUEUE_LOG_DIR=str(tmp / "logs"), PYTHONUNBUFFERED="1")
        if self.kind == "real":
            for n in range(count):
                out = open(tmp / f"{prefix}{n}.out", "wb")  # noqa: SIM115 (closed by the child)
                self.procs.append(subprocess.Popen(
                    [sys.executable, str(tree / "listening_worker.py"), "--url", url,
                     "--queue", queue, "--name", f"{prefix}{n}", "--log-level", "WARNING"],
                    cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT))
                out.close()
            return
        for first in range(0, count, SIM_PER_PROCESS):
            err = open(tmp / f"{prefix}sim{first}.err", "wb")  # noqa: SIM115
            self.procs.append(subprocess.Popen(
                [sys.executable, str(HERE), "--tree", str(tree), "--url", url, "--queue",
                 queue, "--prefix", prefix, "--first", str(first),
                 "--count", str(min(SIM_PER_PROCESS, count - first))],
                cwd=tmp, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err))
            err.close()
            if first == 0:  # its first instance makes the queues and streams (Fleet.start)
                self._expect(self.procs[0], b"first")
        for proc in self.procs:
            self._expect(proc, b"started")

    def _expect(self, proc: subprocess.Popen, word: bytes) -> None:
        for line in proc.stdout:
            if line.strip() == word:
                return
        raise BenchError(f"a simulation process exited ({proc.wait()}); see {self.tmp}")

    def cpu(self) -> float:
        """The workers' processes' user + system CPU seconds (0 for one that is gone)."""
        ticks, total = os.sysconf("SC_CLK_TCK"), 0
        for proc in self.procs:
            try:
                stat = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(stat[11]) + int(stat[12])
        return total / ticks

    def stop(self) -> dict:
        """SIGINT (real) or "stop" (simulated), by pid; what the simulations counted."""
        totals: dict = {}
        for proc in self.procs:
            if proc.poll() is None and self.kind == "real":
                proc.send_signal(signal.SIGINT)
            elif proc.poll() is None:
                proc.stdin.write(b"stop\n")
                proc.stdin.flush()
        for proc in self.procs:
            # a process stopped while starting says "started" first; one that failed, nothing
            for line in proc.stdout if self.kind == "sim" else []:
                if line.startswith(b"{"):
                    for key, value in json.loads(line).items():
                        totals[key] = totals.get(key, [] if isinstance(value, list) else 0) \
                            + value
                    break
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()  # ours, by pid
                proc.wait()
        return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--first", type=int, default=0, help="number of the first instance")
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    log = logging.getLogger("scale_sim")
    if os.environ.get(NO_PROBES):  # a diagnostic (scale.py --no-probes), not the product
        from taskqueue.worker.reach import ReachWatch
        ReachWatch.check = lambda *_args: None  # type: ignore[method-assign]
    fleet = Fleet(args.url, args.queue, [f"{args.prefix}{n}" for n in
                                         range(args.first, args.first + args.count)], log)
    fleet.start(lambda: print("first", flush=True))
    print("started", flush=True)
    sys.stdin.readline()
    print(json.dumps(fleet.stop()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
