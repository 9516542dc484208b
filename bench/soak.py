#!/usr/bin/env python3
"""Resilience figures, counted the way RabbitMQ's own Jepsen runs count them: tasks lost,
duplicated, stuck. A few minutes; not part of `make test`.

    make soak          # writes bench/soak.md

  * many workers: 20 workers share thousands of tasks on the main broker;
  * a silent network path: workers (and then an emitter) reach a throwaway node through a TCP
    proxy that stops forwarding without a FIN or RST, then drops its old connections: how long
    the scripts take to notice (by heartbeat), and what it cost;
  * the emitter's duplicates after such a loss, for two confirm windows, against its speed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path

import pika

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from taskqueue.wire.messages import row_of  # noqa: E402
from tests.brokers import ThrowawayBroker  # noqa: E402
from tests.helpers import consume_all, delete_queues, queue_state, unacked  # noqa: E402
from tests.proxy import SilentProxy  # noqa: E402

MAIN_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DONE = re.compile(r"\[(?P<worker>[^\]/]+)(?:/\d+)?\] done row (?P<row>\d+)")
LOST = re.compile(r"^(?P<stamp>\S+ \S+) WARNING +\[listening_worker pid=(?P<pid>\d+)\] "
                  r"connection to .* lost", re.MULTILINE)
EMITTER_LOST = re.compile(r"^(?P<stamp>\S+ \S+) WARNING +\[emitter_of_tasks pid=\d+\] "
                          r"connection to .* lost", re.MULTILINE)


def env_for(logs: Path) -> dict[str, str]:
    return {**os.environ, "TASKQUEUE_LOG_DIR": str(logs), "PYTHONUNBUFFERED": "1"}


def script(name: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / name), *args]


def write_rows(path: Path, count: int, suffix: str = ".") -> Path:
    path.write_text("".join(f"task {n}{suffix}\n" for n in range(count)), encoding="utf-8")
    return path


def stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").timestamp()


def counted(outputs: list[Path], total: int) -> tuple[int, int, Counter]:
    """(lost, duplicated, done per worker) from the workers' 'done row N' lines."""
    rows: Counter = Counter()
    per_worker: Counter = Counter()
    for path in outputs:
        for match in DONE.finditer(path.read_text(encoding="utf-8")):
            rows[int(match["row"])] += 1
            per_worker[match["worker"]] += 1
    lost = sum(1 for row in range(1, total + 1) if row not in rows)
    duplicated = sum(count - 1 for count in rows.values() if count > 1)
    return lost, duplicated, per_worker


def start_workers(count: int, queue: str, url: str, logs: Path, *extra: str) -> tuple[
        list[subprocess.Popen], list[Path]]:
    outputs, workers = [], []
    for n in range(count):
        output = logs / f"w{n}.out"
        outputs.append(output)
        with open(output, "w") as handle:
            workers.append(subprocess.Popen(
                script("listening_worker.py", "--url", url, "--queue", queue, "--name", f"w{n}",
                       *extra), stdout=handle, stderr=subprocess.STDOUT, env=env_for(logs),
                stdin=subprocess.DEVNULL))
    return workers, outputs


def wait_consumers(queue: str, url: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (queue_state(queue, url) or (0, 0))[1] >= count:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{count} workers did not start on {queue}")


def many_workers(tmp: Path, workers: int = 20, tasks: int = 4000) -> dict:
    logs = tmp / "many"
    logs.mkdir()
    queue = f"soak.many.{uuid.uuid4().hex[:6]}"
    try:
        procs, outputs = start_workers(workers, queue, MAIN_URL, logs, "--seconds-per-dot",
                                       "0.005", "--exit-when-idle", "3")
        wait_consumers(queue, MAIN_URL, workers)
        started = time.monotonic()
        subprocess.run(script("emitter_of_tasks.py", "--queue", queue, "--file",
                              str(write_rows(tmp / "many.csv", tasks)), "--no-admin"),
                       env=env_for(logs), check=True, stdout=subprocess.DEVNULL)
        codes = [proc.wait(timeout=600) for proc in procs]
        seconds = time.monotonic() - started
        lost, duplicated, per_worker = counted(outputs, tasks)
        ready = (queue_state(queue) or (0, 0))[0]
        return {"what": f"{workers} workers, {tasks:,} tasks of 5 ms, main broker",
                "lost": lost, "duplicated": duplicated, "stuck": ready + unacked(queue),
                "notes": f"{seconds:.1f} s; every worker did tasks: "
                         f"{len(per_worker) == workers} ({min(per_worker.values())}-"
                         f"{max(per_worker.values())} each); exit codes {set(codes)}"}
    finally:
        delete_queues(queue)


def silent_workers(tmp: Path, node: ThrowawayBroker, heartbeat: int, silent_for: float,
                   tasks: int = 300) -> dict:
    logs = tmp / f"silent-workers-{heartbeat}"
    logs.mkdir()
    queue = f"soak.silent.{heartbeat}"
    proxy = SilentProxy(node.port)
    try:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F"
        procs, outputs = start_workers(3, queue, url, logs, "--heartbeat", str(heartbeat),
                                       "--seconds-per-dot", "0.05", "--exit-when-idle", "5",
                                       "--connect-timeout", "300")
        wait_consumers(queue, node.url, 3)
        subprocess.run(script("emitter_of_tasks.py", "--url", node.url, "--queue", queue,
                              "--file", str(write_rows(tmp / "silent.csv", tasks)), "--no-admin"),
                       env=env_for(logs), check=True, stdout=subprocess.DEVNULL)
        while sum(counted(outputs, tasks)[2].values()) < 45:
            time.sleep(0.1)
        proxy.go_silent()
        log_file = logs / "listening_worker.log"
        deadline = time.monotonic() + 6 * heartbeat + 30
        while time.monotonic() < deadline:
            noticed = {m["pid"]: stamp(m["stamp"]) for m in
                       reversed(list(LOST.finditer(log_file.read_text(encoding="utf-8"))))}
            if len(noticed) >= 3:
                break
            time.sleep(0.2)
        time.sleep(max(0.0, silent_for - (time.time() - proxy.silent_since)))
        proxy.drop_old()
        before = counted(outputs, tasks)[2]
        codes = [proc.wait(timeout=600) for proc in procs]
        lost, duplicated, after = counted(outputs, tasks)
        detection = sorted(when - proxy.silent_since for when in noticed.values())
        ready = (queue_state(queue, node.url) or (0, 0))[0]
        return {"what": f"3 workers, {tasks} tasks of 50 ms, path silent {silent_for:.0f} s, "
                        f"heartbeat {heartbeat} s",
                "lost": lost, "duplicated": duplicated,
                "stuck": ready + unacked(queue, node.node),
                "notes": f"noticed after {', '.join(f'{d:.1f}' for d in detection)} s; every "
                         f"worker did tasks after the fault: "
                         f"{all(after[w] > before[w] for w in after)}; exit codes {set(codes)}"}
    finally:
        proxy.close()


def silent_emitter(tmp: Path, node: ThrowawayBroker, window: int | None, attempt: int,
                   rows: int = 30_000, silent_for: float = 15.0) -> dict:
    """*window* None: the emitter's default (2,000 on the quorum queue it makes)."""
    logs = tmp / f"silent-emitter-{window}-{attempt}"
    logs.mkdir()
    queue = f"soak.emit.{window}.{attempt}"
    window_args = [] if window is None else ["--confirm-window", str(window)]
    csv = write_rows(tmp / "emit.csv", rows)
    clean_queue = f"soak.emitclean.{window}.{attempt}"
    started = time.monotonic()
    subprocess.run(script("emitter_of_tasks.py", "--url", node.url, "--queue", clean_queue,
                          "--file", str(csv), *window_args, "--no-admin"),
                   env=env_for(logs), check=True, stdout=subprocess.DEVNULL)
    rate = rows / (time.monotonic() - started)
    proxy = SilentProxy(node.port)
    try:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F"
        output = logs / "emitter.out"
        with open(output, "w") as handle:
            emitter = subprocess.Popen(
                script("emitter_of_tasks.py", "--url", url, "--heartbeat", "2", "--queue", queue,
                       "--file", str(csv), *window_args, "--no-admin"),
                stdout=handle, stderr=subprocess.STDOUT, env=env_for(logs))
        while (queue_state(queue, node.url) or (0, 0))[0] < rows // 3:
            time.sleep(0.01)
        proxy.go_silent()
        time.sleep(silent_for)
        proxy.drop_old()
        code = emitter.wait(timeout=300)
        text = (logs / "emitter_of_tasks.log").read_text(encoding="utf-8")
        noticed = [stamp(m["stamp"]) - proxy.silent_since for m in EMITTER_LOST.finditer(text)]
        found = Counter(row_of(props.message_id) for props, _ in consume_all(queue, node.url))
        lost = sum(1 for row in range(1, rows + 1) if row not in found)
        duplicated = sum(found.values()) - rows + lost
        summary = re.search(r"(\d+) republished after a connection loss",
                            output.read_text(encoding="utf-8"))
        shown = f"{window:,}" if window else "default (2,000 on quorum)"
        return {"what": f"emitter, {rows:,} rows, window {shown}, path silent "
                        f"{silent_for:.0f} s mid-publish (heartbeat 2 s)",
                "lost": lost, "duplicated": duplicated, "stuck": 0,
                "notes": f"{rate:,.0f} msg/s without a fault; noticed after "
                         f"{noticed[0] if noticed else float('nan'):.1f} s; summary said "
                         f"{summary[1] if summary else '?'} republished (the bound); exit code "
                         f"{code}"}
    finally:
        proxy.close()
        for name in (queue, clean_queue):
            connection = pika.BlockingConnection(pika.URLParameters(node.url))
            connection.channel().queue_delete(name)
            connection.close()


def render(results: list[dict]) -> str:
    lines = ["# Resilience figures (make soak)", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores, RabbitMQ "
             f"on 127.0.0.1, pika {pika.__version__}, Python {sys.version.split()[0]}.", "",
             "| run | lost | duplicated | stuck | notes |", "|---|---|---|---|---|"]
    lines += [f"| {r['what']} | {r['lost']} | {r['duplicated']} | {r['stuck']} | {r['notes']} |"
              for r in results]
    return "\n".join(lines) + "\n"


def main() -> int:
    results = []
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        results.append(many_workers(tmp))
        print(render(results), flush=True)
        node = ThrowawayBroker([]).start()
        try:
            for heartbeat, silent_for in ((2, 15.0), (10, 35.0)):
                results.append(silent_workers(tmp, node, heartbeat, silent_for))
                print(render(results[-1:]), flush=True)
            for attempt in range(2):  # alternating: how many were duplicates varies by run
                for window in (None, 10_000):
                    results.append(silent_emitter(tmp, node, window, attempt))
                    print(render(results[-1:]), flush=True)
        finally:
            node.cleanup()
    text = render(results)
    print(text)
    (ROOT / "bench" / "soak.md").write_text(text, encoding="utf-8")
    print("written to bench/soak.md")
    bad = [r for r in results if r["lost"] or r["stuck"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
