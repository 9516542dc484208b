#!/usr/bin/env python3
"""Benchmarks: ours against naive baselines, side by side in one run, as ratios.

    make bench         # full sizes; writes bench/results.md
    make bench-quick   # small sizes, a few seconds; writes bench/out/results-quick.md (CI)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pika

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import baselines  # noqa: E402
from bench.work import noop  # noqa: E402
from taskqueue.broker.config import BrokerSettings, QueueSpec  # noqa: E402
from taskqueue.emitter.publisher import ConfirmedPublisher  # noqa: E402
from taskqueue.emitter.tasks import read_tasks  # noqa: E402
from taskqueue.log import get_logger  # noqa: E402
from taskqueue.results.history import History  # noqa: E402
from taskqueue.views.report import RunReport  # noqa: E402
from taskqueue.worker.consumer import TaskConsumer, WorkerOptions  # noqa: E402
from taskqueue.worker.work import InProcessHandler, IsolatedHandler, Runner, SimulatedWork  # noqa: E402

URL = os.environ.get("BENCH_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
WORKER_DEADLINE = 300.0  # seconds for one in-process worker measurement


@dataclass
class Row:
    measure: str
    ours: float
    baseline: float
    unit: str
    goal: str
    passed: bool

    @property
    def ratio(self) -> float:
        return self.ours / self.baseline if self.baseline else float("inf")


class Queues:
    """Unique queue names for this run; all deleted at the end."""

    def __init__(self) -> None:
        self.prefix = f"bench.{uuid.uuid4().hex[:8]}"
        self.made: list[str] = []

    def new(self, label: str) -> str:
        name = f"{self.prefix}.{label}"
        self.made.append(name)
        return name

    def delete_all(self) -> None:
        self.delete(*self.made)

    @staticmethod
    def delete(*names: str) -> None:
        """Delete now (every queue of each name, and its events exchange), so the next
        measurement starts on a broker as empty as the last one."""
        connection = pika.BlockingConnection(pika.URLParameters(URL))
        channel = connection.channel()
        for name in names:
            spec = QueueSpec(name)
            for each in spec.everything:
                channel.queue_delete(each)
            channel.exchange_delete(spec.exchange)
        connection.close()


def write_rows(path: Path, count: int, dots: int = 0) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for number in range(count):
            handle.write(f"task {number}{'.' * dots}\n")
    return path


def quiet_logger(name: str, directory: Path) -> logging.Logger:
    """The scripts' own logging (file + console, on its background thread), with the console
    sent to /dev/null: the cost stays, the noise goes."""
    os.environ["TASKQUEUE_LOG_DIR"] = str(directory)
    return get_logger(name, "INFO", console=open(os.devnull, "w"))


def settings() -> BrokerSettings:
    return BrokerSettings(urls=[URL], connect_timeout=10)


def ours_publish(queue: str, path: Path, log: logging.Logger) -> float:
    started = time.perf_counter()
    publisher = ConfirmedPublisher(settings(), QueueSpec(queue, "classic"),
                                   read_tasks(str(path)), log)
    publisher.run()
    assert publisher.stats.confirmed == publisher.stats.read, "every row confirmed"
    return time.perf_counter() - started


def bench_emitter(queues: Queues, tmp: Path, rows: int, log: logging.Logger) -> list[Row]:
    path = write_rows(tmp / "rows.csv", rows)
    naive_path = write_rows(tmp / "naive.csv", max(200, rows // 10))
    naive_rows = max(200, rows // 10)
    ours_times, unconfirmed_times = [], []
    for attempt in range(3):  # alternate, so drift on a noisy machine hits both alike
        queue = queues.new(f"ours{attempt}")
        ours_times.append(ours_publish(queue, path, log))
        queues.delete(queue)
        queue = queues.new(f"unconf{attempt}")
        unconfirmed_times.append(baselines.publish_unconfirmed(URL, queue, str(path)))
        queues.delete(queue)
    ours, unconfirmed = min(ours_times), min(unconfirmed_times)
    naive = baselines.publish_confirm_each(URL, queues.new("naive"), str(naive_path))
    ours_rate, naive_rate, unconf_rate = rows / ours, naive_rows / naive, rows / unconfirmed
    return [
        Row("emitter msg/s vs confirm-per-message", ours_rate, naive_rate, "msg/s", ">= 10x",
            ours_rate >= 10 * naive_rate),
        Row("emitter msg/s vs unconfirmed loop", ours_rate, unconf_rate, "msg/s", ">= 0.8x",
            ours_rate >= 0.8 * unconf_rate),
    ]


def preload(queue: str, count: int, queue_type: str = "classic", dots: int = 0) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    channel.queue_declare(queue, durable=True, arguments={"x-queue-type": queue_type})
    # Confirmed, in groups: a message still unconfirmed when the connection closes may never
    # reach a quorum queue (seen here: 299 of 300), and the worker would wait for it forever.
    channel.confirm_delivery()
    for number in range(count):
        channel.basic_publish("", queue, f"task {number}{'.' * dots}".encode(),
                              baselines.PERSISTENT)
    connection.close()


def ours_worker(queue: str, count: int, log: logging.Logger,
                runners: list[Runner] | None = None) -> float:
    """The worker as listening_worker.py wires it (events, a log line at the start and end of
    every task; simulated work unless *runners* say otherwise), stopped after *count* tasks."""
    runners = runners or [SimulatedWork(0.0)]
    consumer = TaskConsumer(settings(), QueueSpec(queue), log, WorkerOptions(name="bench"),
                            runners)

    deadline = time.monotonic() + WORKER_DEADLINE

    def stop_when_done() -> None:
        if consumer.stats.done >= count or time.monotonic() > deadline:
            consumer.request_stop()  # (a deadline: a benchmark never hangs CI; it fails below)
        else:
            consumer.ioloop.call_later(0.005, stop_when_done)

    consumer.ioloop.call_later(0.005, stop_when_done)
    started = time.perf_counter()
    consumer.run()
    assert consumer.stats.done == count, consumer.stats.done
    return time.perf_counter() - started


def bench_worker(queues: Queues, count: int, log: logging.Logger) -> list[Row]:
    ours_times, bare_times, tutorial_times = [], [], []
    for attempt in range(5):  # alternate, so drift on a noisy machine hits both alike
        queue = queues.new(f"bare{attempt}")
        preload(queue, count)
        bare_times.append(baselines.bare_worker(URL, queue, count))
        queues.delete(queue)
        queue = queues.new(f"tutorial{attempt}")
        preload(queue, count)
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            tutorial_times.append(baselines.bare_worker(URL, queue, count, say=True))
        queues.delete(queue)
        queue = queues.new(f"worker{attempt}")
        preload(queue, count)
        ours_times.append(ours_worker(queue, count, log))
        queues.delete(queue)
    ours_rate, bare_rate = count / min(ours_times), count / min(bare_times)
    tutorial_rate = count / min(tutorial_times)
    return [Row("worker zero-dot tasks/s vs bare worker (no output)", ours_rate, bare_rate,
                "tasks/s", ">= 0.9x", ours_rate >= 0.9 * bare_rate),
            Row("worker zero-dot tasks/s vs tutorial worker (2 prints/task)", ours_rate,
                tutorial_rate, "tasks/s", "context", True)]


def bench_isolation(queues: Queues, count: int, log: logging.Logger) -> list[Row]:
    """Per-task cost of a handler in its own child process against a plain call."""
    isolated_times, in_process_times = [], []
    for attempt in range(3):
        queue = queues.new(f"inproc{attempt}")
        preload(queue, count)
        in_process_times.append(ours_worker(queue, count, log, [InProcessHandler(noop)]))
        queues.delete(queue)
        queue = queues.new(f"isolated{attempt}")
        preload(queue, count)
        runner = IsolatedHandler("bench.work:noop")
        runner.start()  # the child's start-up is paid once per worker, not per task
        try:
            isolated_times.append(ours_worker(queue, count, log, [runner]))
        finally:
            runner.close()
        queues.delete(queue)
    isolated_us = 1e6 * min(isolated_times) / count
    in_process_us = 1e6 * min(in_process_times) / count
    return [Row("handler per task: isolated child vs in-process call", isolated_us,
                in_process_us, "us", "+ < 1 ms/task", isolated_us - in_process_us < 1000)]


def bench_concurrency(queues: Queues, count: int, log: logging.Logger,
                      task_seconds: float = 0.02) -> list[Row]:
    """Short tasks (20 ms each) with 1, 2 and 4 slots in one worker."""
    rates = {}
    for slots in (1, 2, 4):
        queue = queues.new(f"slots{slots}")
        preload(queue, count, dots=1)
        runners = [SimulatedWork(task_seconds) for _ in range(slots)]
        rates[slots] = count / ours_worker(queue, count, log, runners)
        queues.delete(queue)
    return [Row(f"{slots} slots vs 1 slot, {task_seconds * 1000:.0f} ms tasks", rates[slots],
                rates[1], "tasks/s", f">= {goal}x", rates[slots] >= goal * rates[1])
            for slots, goal in ((2, 1.8), (4, 3.4))]


def bench_queue_types(queues: Queues, tmp: Path, rows: int, count: int,
                      log: logging.Logger) -> list[Row]:
    """Quorum (what auto creates) against classic, publishing and consuming, side by side."""
    path = write_rows(tmp / "types.csv", rows)
    publish: dict[str, list[float]] = {"quorum": [], "classic": []}
    consume: dict[str, list[float]] = {"quorum": [], "classic": []}
    for attempt in range(3):
        for kind in ("quorum", "classic"):
            queue = queues.new(f"{kind}p{attempt}")
            publisher = ConfirmedPublisher(settings(), QueueSpec(queue, kind),
                                           read_tasks(str(path)), log)
            started = time.perf_counter()
            publisher.run()
            publish[kind].append(time.perf_counter() - started)
            queues.delete(queue)
            queue = queues.new(f"{kind}c{attempt}")
            preload(queue, count, kind)
            consume[kind].append(ours_worker(queue, count, log))
            queues.delete(queue)
    return [
        Row("emitter msg/s: quorum queue vs classic", rows / min(publish["quorum"]),
            rows / min(publish["classic"]), "msg/s", "context", True),
        Row("worker zero-dot tasks/s: quorum queue vs classic", count / min(consume["quorum"]),
            count / min(consume["classic"]), "tasks/s", "context", True)]


def bench_fairness(queues: Queues, tmp: Path, tasks: int, workers: int,
                   seconds_per_dot: float) -> list[Row]:
    queue = queues.new("fair")
    rng = random.Random(42)
    dots = [1 + n % 8 for n in range(tasks)]
    rng.shuffle(dots)
    path = tmp / "fair.csv"
    path.write_text("".join(f"job {n}{'.' * d}\n" for n, d in enumerate(dots)))
    env = {**os.environ, "TASKQUEUE_LOG_DIR": str(tmp / "logs")}
    procs = [subprocess.Popen([sys.executable, str(ROOT / "listening_worker.py"), "--queue", queue,
                               "--name", f"w{n}", "--seconds-per-dot", str(seconds_per_dot),
                               "--exit-when-idle", "3"], env=env, stdout=subprocess.DEVNULL)
             for n in range(workers)]
    wait_for_consumers(queue, workers)  # all consuming before the first task arrives
    subprocess.run([sys.executable, str(ROOT / "emitter_of_tasks.py"), "--queue", queue, "--file",
                    str(path), "--no-admin"], env=env, stdout=subprocess.DEVNULL, check=True)
    for proc in procs:
        proc.wait(timeout=120)
    history = History(settings(), QueueSpec(queue), tmp / "reports")
    run = history.latest_run() or ""
    report = RunReport(history.run_records(run)(), run, queue)
    makespan = report.end - report.start
    bound = max(max(dots) * seconds_per_dot, sum(dots) * seconds_per_dot / workers)
    return [Row(f"fair dispatch makespan, {tasks} tasks / {workers} workers", makespan, bound,
                "s", "<= 1.1x lower bound", makespan <= 1.1 * bound)]


def wait_for_consumers(queue: str, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        connection = pika.BlockingConnection(pika.URLParameters(URL))
        try:
            frame = connection.channel().queue_declare(queue, passive=True)
            if frame.method.consumer_count >= count:
                return
        except pika.exceptions.ChannelClosedByBroker:
            pass  # not declared yet
        finally:
            connection.close()
        time.sleep(0.1)
    raise RuntimeError(f"{count} workers did not start consuming {queue} in {timeout} s")


def peak_rss_kib(queue: str, path: Path, tmp: Path) -> int:
    env = {**os.environ, "TASKQUEUE_LOG_DIR": str(tmp / "logs")}
    proc = subprocess.Popen([sys.executable, str(ROOT / "emitter_of_tasks.py"), "--queue", queue,
                             "--file", str(path), "--no-admin"], env=env,
                            stdout=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return usage.ru_maxrss


def bench_memory(queues: Queues, tmp: Path, small: int, large: int) -> list[Row]:
    small_kib = peak_rss_kib(queues.new("mem_small"), write_rows(tmp / "small.csv", small), tmp)
    large_kib = peak_rss_kib(queues.new("mem_large"), write_rows(tmp / "large.csv", large), tmp)
    return [Row(f"emitter peak RSS, {large:,} rows vs {small:,} rows", large_kib / 1024,
                small_kib / 1024, "MiB", "<= 1.1x", large_kib <= 1.1 * small_kib)]


def render(rows: list[Row], title: str) -> str:
    lines = [f"# {title}", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores, "
             f"RabbitMQ at {URL.split('@')[-1]}, pika {pika.__version__}, "
             f"Python {sys.version.split()[0]}.", "",
             "| measure | ours | baseline | ratio | goal | result |", "|---|---|---|---|---|---|"]
    for row in rows:
        result = "—" if row.goal == "context" else ("pass" if row.passed else "FAIL")
        lines.append(f"| {row.measure} | {row.ours:,.2f} {row.unit} | {row.baseline:,.2f} "
                     f"{row.unit} | {row.ratio:.2f}x | {row.goal} | {result} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    args = parser.parse_args()
    sizes = (dict(rows=2000, worker=300, fair=12, small=500, large=5000, slots=40, types=2000)
             if args.quick else
             dict(rows=50_000, worker=5000, fair=40, small=1000, large=1_000_000, slots=200,
                  types=50_000))
    queues = Queues()
    results: list[Row] = []
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        (tmp / "logs").mkdir()
        log = quiet_logger("bench", tmp)
        try:
            results += bench_emitter(queues, tmp, sizes["rows"], log)
            results += bench_worker(queues, sizes["worker"], log)
            results += bench_isolation(queues, sizes["worker"], log)
            results += bench_concurrency(queues, sizes["slots"], log)
            results += bench_queue_types(queues, tmp, sizes["types"], sizes["worker"], log)
            results += bench_fairness(queues, tmp, sizes["fair"], 4, 0.05)
            results += bench_memory(queues, tmp, sizes["small"], sizes["large"])
        finally:
            queues.delete_all()
    title = "Benchmark results (quick sizes)" if args.quick else "Benchmark results"
    text = render(results, title)
    if args.quick:
        text += ("\nQuick sizes only check that every benchmark still runs; they are too small "
                 "to judge the goals (see `make bench` and bench/results.md).\n")
    print(text)
    out = ROOT / ("bench/out/results-quick.md" if args.quick else "bench/results.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
