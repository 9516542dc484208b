#!/usr/bin/env python3
"""The results record at scale: a run of 10k, 100k and 1M records in a queue's results stream
(written as workers write them: groups of records per stream message), then, each in a process
of its own so that its peak memory is its own:

  * ``task_report.py --run RUN --csv FILE``: the report and one row per task, read from the
    stream;
  * ``emitter_of_tasks.py --skip-done`` on the run's file: every row is done, none published.

    make bench-records                       # writes bench/records.md
    python bench/records.py --sizes 10000    # quicker

Goals (issue 22): a report or --csv of 1M records under 100 MB; memory flat with size.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pika

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from taskqueue.broker.config import QueueSpec  # noqa: E402
from taskqueue.wire.messages import FIRST_PUBLISH, PUBLISHED_AGAIN, message_id  # noqa: E402
from taskqueue.wire.record import new_run_id, stream_arguments  # noqa: E402

URL = os.environ.get("BENCH_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
GOAL_MB = 100.0
GROUP = 500  # records per stream message, as a busy worker's groups


def write_run(queue: str, path: Path, count: int, run_id: str) -> None:
    """*count* tasks in a CSV file and their done records (2% with a failed attempt first,
    1% dead) in the queue's results stream."""
    source = str(path.resolve())
    with open(path, "w", encoding="utf-8") as handle:
        for row in range(1, count + 1):
            handle.write(f"task {row}..\n")
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    spec = QueueSpec(queue)
    channel.queue_declare(spec.results_name, durable=True, arguments=stream_arguments())
    channel.confirm_delivery()
    clock = time.time() - count * 0.01
    group = [{"kind": "run", "id": "r0", "run_id": run_id, "queue": queue, "state": "started",
              "total": count, "published": 0, "time": clock}]
    for row in range(1, count + 1):
        text = f"task {row}.."
        common = {"kind": "task", "run_id": run_id, "worker": f"w{row % 10}/{row % 4 + 1}",
                  "host": "h1", "message_id": message_id(source, row, text, path.name),
                  "row": row, "task": text, "queued": clock, "received": clock,
                  "started": clock, "finished": clock + 0.01, "seconds": 0.01,
                  "redelivered": False, "cut": False, "seen": row}
        if row % 50 == 0:
            group.append({**common, "id": f"f{row}", "outcome": "failed", "attempt": 1,
                          "reason": "ValueError: boom", "result": None})
        dead = row % 100 == 7
        group.append({**common, "id": f"e{row}", "outcome": "dead" if dead else "done",
                      "attempt": 2 if row % 50 == 0 else 1,
                      "reason": "failed 4 times; last: boom" if dead else "",
                      "result": None if dead else f"did {row}"})
        clock += 0.01
        if len(group) >= GROUP:
            channel.basic_publish("", spec.results_name, json.dumps(group).encode())
            group = []
    group.append({"kind": "run", "id": "r1", "run_id": run_id, "queue": queue,
                  "state": "finished", "total": count, "published": count, "time": clock})
    channel.basic_publish("", spec.results_name, json.dumps(group).encode())
    connection.close()


def measure(args: list[str], cwd: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    """(seconds, peak MB of the child alone, result): one process per measurement."""
    code = ("import resource, subprocess, sys, time\n"
            "t = time.perf_counter()\n"
            "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
            "sys.stdout.write(r.stdout[-4000:]); sys.stderr.write(r.stderr[-4000:])\n"
            "print('MEASURED', time.perf_counter() - t,"
            " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
            "sys.exit(r.returncode)\n")
    env = {**os.environ, "TASKQUEUE_LOG_DIR": str(cwd / "logs")}
    result = subprocess.run([sys.executable, "-c", code, sys.executable, *args],
                            capture_output=True, text=True, cwd=cwd, env=env)
    line = [x for x in result.stdout.splitlines() if x.startswith("MEASURED")][-1].split()
    return float(line[1]), int(line[2]) / 1024, result


def delete(queue: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    for name in QueueSpec(queue).everything:
        connection.channel().queue_delete(name)
    connection.channel().exchange_delete(f"{queue}.events")
    connection.close()


READ = re.compile(r"results record: (\d+) deliveries checked; (\d+) records read")


def worker_rows(queue: str, tasks: Path, count: int, run_id: str,
                tmp: Path) -> list[tuple[int, str, float, float, str]]:
    """A worker started on a run whose record already holds *count* records, taking one more
    task of it: first as the emitter's first publish (not checked: the record is not read),
    then as a copy published again (checked: the run's records are read up to a fence). The
    time includes the worker's start and its 1 s --exit-when-idle."""
    rows = []
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    connection.channel().queue_purge(queue)  # the rows --skip-done published: not these
    connection.close()
    for kind, what in ((FIRST_PUBLISH, "worker: next task (first publish)"),
                       (PUBLISHED_AGAIN, "worker: a copy (checked)")):
        row = count + 1
        connection = pika.BlockingConnection(pika.URLParameters(URL))
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("", queue, b"one more", pika.BasicProperties(
            delivery_mode=2, message_id=message_id(str(tasks.resolve()), row, "one more",
                                                   tasks.name),
            correlation_id=run_id, type=kind, timestamp=int(time.time())))
        connection.close()
        seconds, mb, result = measure(
            [str(ROOT / "listening_worker.py"), "--queue", queue, "--exit-when-idle", "1"], tmp)
        found = READ.search(result.stdout + result.stderr)
        assert result.returncode == 0 and found, result.stdout + result.stderr
        rows.append((count, what, seconds, mb,
                     f"{int(found[1])} checked, {int(found[2]):,} records read"))
    return rows


def bench(sizes: list[int]) -> list[tuple[int, str, float, float, str]]:
    rows = []
    for count in sizes:
        queue = f"bench.records.{uuid.uuid4().hex[:8]}.{count}"
        with tempfile.TemporaryDirectory(prefix="bench-records-") as tmp_name:
            tmp = Path(tmp_name)
            run_id = new_run_id(suffix="bench")
            tasks = tmp / f"tasks{count}.csv"
            try:
                started = time.perf_counter()
                write_run(queue, tasks, count, run_id)
                print(f"{count:,} records written in {time.perf_counter() - started:.1f} s",
                      flush=True)
                out = tmp / "out.csv"
                seconds, mb, result = measure(
                    [str(ROOT / "task_report.py"), "--queue", queue, "--run", run_id, "--csv",
                     str(out), "--reports-dir", str(tmp / "reports")], tmp)
                assert result.returncode == 0, result.stdout + result.stderr
                with open(out, encoding="utf-8") as handle:
                    lines = sum(1 for _ in csv.reader(handle)) - 1
                assert lines == count, (lines, count)
                rows.append((count, "task_report.py --csv", seconds, mb,
                             f"{lines:,} rows, one per task"))
                seconds, mb, result = measure(
                    [str(ROOT / "emitter_of_tasks.py"), "--queue", queue, "--file", str(tasks),
                     "--skip-done", "--no-admin"], tmp)
                skipped = count - count // 100  # the dead ones are not done: published again
                assert f"skipped {skipped} rows done before" in result.stdout, result.stdout
                rows.append((count, "emitter --skip-done", seconds, mb,
                             f"{skipped:,} skipped, {count // 100:,} published"))
                rows += worker_rows(queue, tasks, count, run_id, tmp)
            finally:
                delete(queue)
        for row in rows[-4:]:
            print(f"{row[0]:>9,}  {row[1]:<22} {row[2]:6.1f} s  {row[3]:6.1f} MB  {row[4]}",
                  flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--write", action="store_true", help="write bench/records.md")
    args = parser.parse_args()
    rows = bench(args.sizes)
    peak = max(row[3] for row in rows)
    lines = [
        "# The results record at scale", "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores, RabbitMQ at "
        "127.0.0.1:5672 (`make bench-records`). Each command in a process of its own; "
        "peak RSS is that process's.", "",
        "| records | command | seconds | peak MB | what it did |", "|---|---|---|---|---|",
        *[f"| {n:,} | {what} | {s:.1f} | {mb:.1f} | {note} |" for n, what, s, mb, note in rows],
        "", f"Goal: under {GOAL_MB:.0f} MB at 1M records, flat with size: "
        f"{'pass' if peak < GOAL_MB else 'FAIL'} (peak {peak:.1f} MB).", ""]
    print("\n".join(lines))
    if args.write:
        (ROOT / "bench" / "records.md").write_text("\n".join(lines), encoding="utf-8")
    return 0 if peak < GOAL_MB else 1


if __name__ == "__main__":
    sys.exit(main())
