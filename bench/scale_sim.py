#!/usr/bin/env python3
"""The processes bench/scale.py runs (workers, real or simulated; a private broker) and
its reading of the broker's counters (``Broker``: read-only).

Simulated workers: the product's own ``TaskConsumer`` (built as taskqueue/commands/worker.py
builds it, one slot of simulated work), each instance in a thread of its own with its own pika
I/O loop and its own two connections (consuming and publishing), so that what the broker sees
per task is exactly the real worker's wire traffic. As a script, one process of them:

    python bench/scale_sim.py --tree DIR --url URL --queue Q --prefix NAME --count K

(DIR: the product tree to import, a ``git archive`` of the commit measured.) It prints
``started`` once every instance is subscribed (started one after the other); reads one line
on stdin (any: "stop"), asks every instance to stop (as a first Ctrl+C would), waits for them,
and prints one JSON line:
``{"workers": K, "done": tasks done, "tail_read": messages the tails read, "threads": live
threads, "stuck": instances not stopped}``.

``PrivateBroker``: a RabbitMQ node of the machine's version in a network namespace of its own
(``bench-scale``), with 20,000 file descriptors: the machine's broker is shared (its counters
move with other sessions' work) and allows 1,024 descriptors, fewer than 1,000 workers need.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

STOP_WAIT_SECONDS = 30.0
START_WAIT_SECONDS = 60.0  # for one instance to subscribe
SIM_PER_PROCESS = 50  # TaskConsumer instances per simulation process
HERE = Path(__file__).resolve()
NETNS = "bench-scale"
NODE = "benchscale@localhost"
FD_LIMIT = 20000
BENCH_CONNECTION = "bench.scale"  # the benchmark's own connections' names begin so


class BenchError(RuntimeError):
    """The benchmark could not run a setting."""


EVAL = (
    'C = rabbit_global_counters:overview(), '
    'G = fun(T, K) -> maps:get(K, maps:get([{protocol,amqp091},{queue_type,T}], C)) end, '
    'io:format("pid ~s~n", [os:getpid()]), '
    'io:format("memory ~b~n", [erlang:memory(total)]), '
    '[io:format("fhc ~s ~b~n", [K, V]) || {K, V} <- file_handle_cache:info('
    '[total_limit, sockets_limit, total_used, sockets_used])], '
    '[io:format("count ~s ~s ~b~n", [T, K, G(T, K)]) || T <- [rabbit_stream_queue, '
    'rabbit_quorum_queue, rabbit_classic_queue], K <- [messages_delivered_total, '
    'messages_acknowledged_total, messages_redelivered_total]], '
    # a connection still opening has no figures yet: skipped (it has sent next to nothing)
    '[try io:format("conn ~b ~ts~n", [proplists:get_value(send_oct, I), case lists:keyfind('
    '<<"connection_name">>, 1, proplists:get_value(client_properties, I)) of '
    '{_, longstr, B} -> B; _ -> <<"-">> end]) catch _:_ -> skipped end || '
    'I <- rabbit_networking:connection_info_all([client_properties, send_oct])], ok.')


@dataclass
class Snapshot:
    at: float
    cpu: float  # the broker's user + system CPU seconds
    counts: dict[str, int]  # "<queue type> <counter>" -> value
    fhc: dict[str, int]
    memory: int
    fds: int
    send_oct: dict[str, int] = field(default_factory=dict)  # connection name -> bytes

    def stream(self) -> int:
        return self.counts["rabbit_stream_queue messages_delivered_total"]

    def acked(self) -> int:
        return sum(v for k, v in self.counts.items() if k.endswith("acknowledged_total")
                   and not k.startswith("rabbit_stream_queue"))

    def tasks_delivered(self) -> int:
        return sum(v for k, v in self.counts.items() if k.endswith("delivered_total")
                   and not k.startswith("rabbit_stream_queue"))

    def worker_bytes(self, prefix: str, consuming_only: bool = False) -> int:
        return sum(v for name, v in self.send_oct.items() if prefix in name
                   and not (consuming_only and name.endswith("(publishing)")))

    def foreign(self, prefix: str) -> int:
        """Connections that are not this setting's workers nor the benchmark's own."""
        return sum(1 for name in self.send_oct if prefix not in name
                   and not name.startswith(BENCH_CONNECTION)
                   and not name.startswith("emitter_of_tasks"))


class Broker:
    """Reads the broker's counters (never changes anything on it)."""

    def __init__(self) -> None:
        self.ticks = os.sysconf("SC_CLK_TCK")
        node = os.environ.get("BENCH_NODE")
        self.ctl = ["rabbitmqctl", *(["-n", node] if node else [])]
        self.where = f"private node {node} (bench/scale_sim.py)" if node else "the machine's"
        self.pid = int(self._ctl()["pid"])
        comm = Path(f"/proc/{self.pid}/comm").read_text().strip()
        if comm != "beam.smp":
            raise BenchError(f"the node's pid {self.pid} is {comm!r}, not beam.smp: is the "
                             "broker on this machine?")
        self.version = subprocess.run([*self.ctl, "version"], capture_output=True,
                                      text=True, timeout=60).stdout.strip()
        limits = Path(f"/proc/{self.pid}/limits").read_text()
        self.fd_limit = int(re.search(r"Max open files\s+(\d+)", limits).group(1))

    def _ctl(self) -> dict:
        out = subprocess.run([*self.ctl, "eval", EVAL], capture_output=True, text=True,
                             timeout=60)
        if out.returncode != 0:
            raise BenchError(f"rabbitmqctl eval failed: {out.stderr.strip()[-300:]}")
        parsed: dict = {"counts": {}, "fhc": {}, "send_oct": {}}
        for line in out.stdout.splitlines():
            head, _, rest = line.partition(" ")
            if head in ("pid", "memory"):
                parsed[head] = rest
            elif head == "count":
                key, _, value = rest.rpartition(" ")
                parsed["counts"][key] = int(value)
            elif head == "fhc":
                key, _, value = rest.partition(" ")
                parsed["fhc"][key] = int(value)
            elif head == "conn":
                value, _, name = rest.partition(" ")
                parsed["send_oct"][name] = parsed["send_oct"].get(name, 0) + int(value)
        return parsed

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.ticks  # utime, stime

    def snapshot(self) -> Snapshot:
        parsed = self._ctl()
        return Snapshot(time.monotonic(), self.cpu(), parsed["counts"], parsed["fhc"],
                        int(parsed["memory"]), len(os.listdir(f"/proc/{self.pid}/fd")),
                        parsed["send_oct"])


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


def run_one(consumer, log: logging.Logger) -> None:
    try:
        consumer.run()
    except Exception:  # one instance's failure is reported, the others go on
        log.exception("[%s] failed", consumer.options.name)


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
        # The processes start together, each its instances one after the other: at most one
        # connection per process opening at a time (serial: 2 instances/s, too slow for 1,000)
        for proc in self.procs:
            if proc.stdout.readline().strip() != b"started":
                raise BenchError(f"a simulation process exited ({proc.wait()}); see {tmp}")

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
                        totals[key] = totals.get(key, 0) + value
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
    consumers = [build(args.url, args.queue, f"{args.prefix}{n}", log)
                 for n in range(args.first, args.first + args.count)]
    threads = [threading.Thread(target=run_one, args=(c, log), name=c.options.name, daemon=True)
               for c in consumers]
    for thread, consumer in zip(threads, consumers):
        thread.start()
        # One at a time, each subscribed before the next: 2,000 connections opened at once
        # time out on a 2-core broker (measured: 374 of 1,000 instances gave up after 60 s).
        deadline = time.monotonic() + START_WAIT_SECONDS
        while not subscribed(consumer) and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
    print("started", flush=True)
    sys.stdin.readline()
    peak_threads = threading.active_count()
    for consumer in consumers:
        consumer.call_threadsafe(consumer.request_stop)
    for thread in threads:
        thread.join(STOP_WAIT_SECONDS)
    print(json.dumps({"workers": len(consumers),
                      "done": sum(c.stats.done for c in consumers),
                      "tail_read": sum(getattr(c.tail, "messages_read", 0) for c in consumers),
                      "threads": peak_threads,
                      "stuck": sum(t.is_alive() for t in threads)}), flush=True)
    return 0


class PrivateBroker:
    """See the module docstring. ``start()``, then ``run(argv)`` runs a command inside the
    namespace (with ``BENCH_NODE`` set), ``stop()`` removes the node, its epmd and the
    namespace. Root only (``ip netns``)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-scale-broker-"))

    def _ns(self, *argv: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", NETNS, *argv], **kwargs)

    def start(self) -> None:
        if NETNS in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                   text=True).stdout.split():
            self._clear()  # a run that was killed left it: ours
        subprocess.run(["ip", "netns", "add", NETNS], check=True)
        self._ns("ip", "link", "set", "lo", "up", check=True)
        shutil.chown(self.dir, "rabbitmq", "rabbitmq")
        os.chmod(self.dir, 0o755)
        for name, text in (("rabbitmq.conf", "listeners.tcp.default = 127.0.0.1:5672\n"
                            "loopback_users = none\n"), ("enabled_plugins", "[].\n")):
            (self.dir / name).write_text(text)
            shutil.chown(self.dir / name, "rabbitmq", "rabbitmq")
        env = dict(os.environ, HOME="/var/lib/rabbitmq", RABBITMQ_NODENAME=NODE,
                   RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
                   RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
                   RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
                   RABBITMQ_LOG_BASE=str(self.dir / "log"),
                   RABBITMQ_PID_FILE=str(self.dir / "pid"))
        # setpriv, not the packaged wrapper's su: su's PAM limits would bring the node's
        # descriptors back to 1,024
        self._ns("sh", "-c", f"ulimit -n {FD_LIMIT}; exec setpriv --reuid rabbitmq --regid "
                 "rabbitmq --init-groups /usr/lib/rabbitmq/bin/rabbitmq-server -detached",
                 env=env, cwd="/var/lib/rabbitmq", check=True, timeout=60)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            time.sleep(1)
            if self._ns("rabbitmqctl", "-n", NODE, "await_startup", "--timeout", "30",
                        capture_output=True, timeout=60).returncode == 0:
                return
        raise BenchError(f"the private broker did not start; see {self.dir}/log")

    def run(self, argv: list[str]) -> int:
        return self._ns("env", f"BENCH_NODE={NODE}", *argv).returncode

    def stop(self) -> None:
        self._ns("rabbitmqctl", "-n", NODE, "stop", capture_output=True, timeout=60)
        self._clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _clear(self) -> None:
        """What is left in our namespace (epmd, a node that did not stop) was started by
        this benchmark: ended by pid, then the namespace goes."""
        pids = subprocess.run(["ip", "netns", "pids", NETNS], capture_output=True,
                              text=True).stdout.split()
        for pid in map(int, pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        time.sleep(1 if pids else 0)
        subprocess.run(["ip", "netns", "delete", NETNS], check=False)


if __name__ == "__main__":
    sys.exit(main())
