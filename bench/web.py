#!/usr/bin/env python3
"""The web view's costs (issue 23), in this process, on made-up records:

* memory: what the dashboard keeps as it reads the results record (the live state and the
  totals behind /metrics and the runs page), at 10k, 100k and 1M records: it must stay flat;
* the first page of a 100k-task run's table (one row per task, paged), read from the run's
  copy as the server keeps it, against the baseline of writing the same run's CSV
  (``task_report.py --csv``) in the same run.

* with ``--broker N``: a real dashboard (``task_report.py --serve``) reading N records from a
  results stream on the main broker: its whole process's memory once it has read them all.

    python bench/web.py [--write] [--broker 1000000]      # --write: bench/web.md
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from taskqueue.results.table import write_tasks_file
from taskqueue.views.live import LiveState
from taskqueue.web.copies import RunCopies
from taskqueue.web.runs import RunPages
from taskqueue.web.totals import RecordTotals

RUN = "20261201T100000Z-bench0"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def record(n: int, run: str) -> dict:
    now = 1_796_000_000.0 + n * 0.01
    outcome = "dead" if n % 97 == 0 else "done"
    return {"kind": "task", "id": f"p-{n}", "run_id": run, "row": n % 100_000 + 1,
            "message_id": f"m-{n}", "task": f"task number {n} ....", "worker": f"w{n % 50}",
            "slot": f"w{n % 50}/{n % 4}", "host": "bench", "attempt": 1, "outcome": outcome,
            "queued": now - 1, "started": now, "finished": now + 0.2, "seconds": 0.2,
            "result": f"result {n}" if outcome == "done" else None,
            "reason": None if outcome == "done" else f"failed 1 times; last: boom {n}"}


def memory() -> list[tuple[int, float]]:
    state, totals = LiveState("bench", gone_after=4.5), RecordTotals()
    base = rss_mb()
    marks, out = {10_000, 100_000, 1_000_000}, []
    for n in range(1, 1_000_001):
        r = record(n, f"20261201T1{n // 100_000:05d}Z-bench")
        state.feed(r)
        totals.add(r)
        if n in marks:
            out.append((n, rss_mb() - base))
    return out


def first_page(tasks: int) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as directory:
        copies = RunCopies(Path(directory), "bench")
        copies.start()
        for start in range(0, tasks, 1000):  # as the feed adds them: a stream message a time
            copies.add([record(n, RUN) for n in range(start, min(tasks, start + 1000))])
        copies.close(remove=False)
        pages = RunPages(copies, "bench")
        started = time.perf_counter()
        write_tasks_file(Path(directory) / "all.csv", RUN, pages.records(RUN))
        baseline = time.perf_counter() - started
        started = time.perf_counter()
        page = pages.page(RUN)
        cold = time.perf_counter() - started
        assert len(page["rows"]) == 50 and page["tasks"] == tasks, page["tasks"]
        started = time.perf_counter()
        pages.page(RUN, outcome="dead", page=2)
        filtered = time.perf_counter() - started
        started = time.perf_counter()
        pages.page(RUN, text="number 4242")
        searched = time.perf_counter() - started
        return baseline, cold, filtered, searched


def dashboard_memory(count: int, url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
                     ) -> tuple[float, float, float]:
    """(MB of RSS at start, MB once *count* records are read, seconds to read them)."""
    import re
    import signal
    import socket
    import subprocess
    import uuid

    import pika

    from taskqueue.broker.config import QueueSpec
    from taskqueue.control.remove import QueueRemover
    from taskqueue.web.metrics import OUTCOMES
    from taskqueue.wire.record import stream_arguments

    queue = f"bench.web.{uuid.uuid4().hex[:6]}"
    spec = QueueSpec(queue)
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_declare(spec.results_name, durable=True, arguments=stream_arguments())
    channel.confirm_delivery()
    for start in range(0, count, 100):
        group = [record(n, f"20261201T1{n // 100_000:05d}Z-bench") for n in
                 range(start, min(count, start + 100))]
        channel.basic_publish("", spec.results_name, json.dumps(group).encode())
    connection.close()  # (a connection left idle while the server reads would lose its heartbeat)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as directory:
        server = subprocess.Popen([sys.executable, str(root / "task_report.py"), "--serve",
                                   "--queue", queue, "--bind", f"127.0.0.1:{port}",
                                   "--no-browser", "--reports-dir", directory], cwd=directory,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            token = re.search(r"token=(\S+)", server.stdout.readline())[1]
            status = Path(f"/proc/{server.pid}/status")
            began, start_mb = time.monotonic(), _rss(status)
            while _recorded(port, token, OUTCOMES) < count:
                time.sleep(1)
            return start_mb, _rss(status), time.monotonic() - began
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
            connection = pika.BlockingConnection(pika.URLParameters(url))
            QueueRemover(connection, spec).remove(force=True)
            connection.close()


def _rss(status: Path) -> float:
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _recorded(port: int, token: str, outcomes: tuple[str, ...]) -> float:
    import http.client

    from prometheus_client.parser import text_string_to_metric_families

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"})
    body = connection.getresponse().read().decode()
    connection.close()
    return sum(sample.value for family in text_string_to_metric_families(body)
               for sample in family.samples if sample.name == "taskqueue_tasks_total")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write bench/web.md")
    parser.add_argument("--broker", type=int, metavar="N",
                        help="also measure a real dashboard reading N records")
    args = parser.parse_args()
    grown = memory()
    baseline, cold, filtered, searched = first_page(100_000)
    lines = ["# The web view's costs (bench/web.py)", "",
             f"Measured {time.strftime('%Y-%m-%d')} on this machine (2 cores), Python "
             f"{sys.version.split()[0]}.", "",
             "| records read by the dashboard | memory kept (RSS growth) |", "|---:|---:|"]
    lines += [f"| {n:,} | {mb:.1f} MB |" for n, mb in grown]
    lines += ["", "| a 100k-task run | seconds | against the CSV of the run |", "|---|---:|---:|",
              f"| the run's CSV (`task_report.py --csv`, baseline) | {baseline:.2f} | 1.00x |",
              f"| first page of its table (50 tasks) | {cold:.2f} | {cold / baseline:.2f}x |",
              f"| then page 2 of its dead tasks | {filtered:.3f} | "
              f"{filtered / baseline:.3f}x |",
              f"| a text search over its tasks | {searched:.2f} | {searched / baseline:.2f}x |",
              "", "The first page reads the run's copy once (the index: per task, where its "
              "deciding record is); every later page reads its own 50 records. The server's "
              "feed writes the copy as it reads the results stream: a page never reads the "
              "broker."]
    if args.broker:
        start_mb, read_mb, seconds = dashboard_memory(args.broker)
        lines += ["", f"A real dashboard (`task_report.py --serve`) reading {args.broker:,} "
                  f"records from a results stream on the broker: {start_mb:.0f} MB of RSS at "
                  f"start, {read_mb:.0f} MB once all were read ({seconds:.0f} s; the run "
                  "pages' copies are files, not memory)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        (Path(__file__).parent / "web.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
