"""Running the real scripts as subprocesses, and looking at queues on a real broker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pika

from taskqueue.broker.config import QueueSpec

ROOT = Path(__file__).resolve().parent.parent
MAIN_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def script_env(log_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RABBITMQ_URL", None)
    env["TASKQUEUE_LOG_DIR"] = str(log_dir)
    env["PYTHONUNBUFFERED"] = "1"
    env["BROWSER"] = "true"  # webbrowser.open must never start a real browser in tests
    return env


def run_python(code: str, *, log_dir: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """``python -c CODE`` in the repo, as the scripts run (``script_env``): the Python API."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=script_env(log_dir), cwd=ROOT)


def run_script(name: str, *args: str, log_dir: Path, timeout: float = 60,
               stdin: object = subprocess.DEVNULL, input: str | None = None
               ) -> subprocess.CompletedProcess:
    kwargs = {"input": input} if input is not None else {"stdin": stdin}
    return subprocess.run([sys.executable, str(ROOT / name), *args], capture_output=True,
                          text=True, timeout=timeout, env=script_env(log_dir), cwd=ROOT, **kwargs)


RUN_SAID = re.compile(r"\(run (?P<run>[^)\s]+)\)")  # the emitter's "(run ID)"


def emit_run(*args: str, logs: Path) -> str:
    """Run the emitter with *args*, which must succeed; the run id it says."""
    done = run_script("emitter_of_tasks.py", *args, log_dir=logs)
    assert done.returncode == 0, done.stderr[-2000:]
    match = RUN_SAID.search(done.stderr + done.stdout)
    assert match, done.stderr[-2000:]
    return match["run"]


STARTED: list[subprocess.Popen] = []  # background scripts; conftest kills leftovers
OUTPUT_OF: dict[int, Path] = {}  # a background script's pid -> the file its output goes to


def start_script(name: str, *args: str, log_dir: Path, out: Path) -> subprocess.Popen:
    """Start a script in the background, its output going to *out*."""
    handle = open(out, "w")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen([sys.executable, str(ROOT / name), *args], stdout=handle,
                               stderr=subprocess.STDOUT, env=script_env(log_dir), cwd=ROOT,
                               stdin=subprocess.DEVNULL)
    STARTED.append(process)
    OUTPUT_OF[process.pid] = out
    return process


def last_said(process: subprocess.Popen, lines: int = 15) -> str:
    """The last *lines* a background script printed (a test that fails on it says them)."""
    out = OUTPUT_OF.get(process.pid)
    if out is None or not out.exists():
        return "(no output file)"
    return "\n".join(out.read_text(errors="replace").splitlines()[-lines:])


def start_worker(*args: str, log_dir: Path, out: Path) -> subprocess.Popen:
    return start_script("listening_worker.py", *args, log_dir=log_dir, out=out)


def gate_files(tmp_path: Path) -> tuple[Path, Path]:
    """(runs, gate) for tests.handlers:gated, told through the environment the workers get:
    each run is noted in *runs*; a task works until *gate* exists."""
    runs, gate = tmp_path / "runs.txt", tmp_path / "gate"
    os.environ["RUNS_FILE"], os.environ["GATE_FILE"] = str(runs), str(gate)
    return runs, gate


def start_gated(queue: str, name: str, *args: str, log_dir: Path, out: Path,
                port: int | None = None) -> subprocess.Popen:
    """A worker running tests.handlers:gated (``gate_files``), through 127.0.0.1:*port* (a
    proxy of tests/proxy.py) when given."""
    url = f"amqp://guest:guest@127.0.0.1:{port}/%2F" if port else MAIN_URL
    return start_worker("--url", url, "--queue", queue, "--name", name, "--handler",
                        "tests.handlers:gated", *args, log_dir=log_dir, out=out)


def kill_leftovers() -> None:
    """A test that failed half-way may leave workers running: they would declare its queues
    again after teardown, or run forever."""
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def consumers(name: str, url: str = MAIN_URL) -> int:
    state = queue_state(name, url)
    return state[1] if state else 0


def wait_for(predicate, timeout: float = 30, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


DONE_LINE = re.compile(r"\[(?P<worker>[^\]]+)\] done row (?P<row>\d+)")
SKIPPED_LINE = re.compile(r"\[(?P<worker>[^\]]+)\] skipped row (?P<row>\d+), .*: already done")


def done_counts(*outputs: Path) -> Counter:
    """How many tasks each worker logged as done so far (worker -> count)."""
    return Counter(worker for worker, _row in done_rows(*outputs).elements())


def done_rows(*outputs: Path) -> Counter:
    """(worker, row) of every 'done' line in the workers' outputs."""
    rows: Counter = Counter()
    for path in outputs:
        for match in DONE_LINE.finditer(path.read_text()):
            rows[(match["worker"], int(match["row"]))] += 1
    return rows


def settled_rows(*outputs: Path) -> set[int]:
    """Rows done, or skipped as already done (its done record came before a lost ack: the
    task ran once, the redelivery was acked unrun)."""
    rows = {row for _worker, row in done_rows(*outputs)}
    for path in outputs:
        rows |= {int(match["row"]) for match in SKIPPED_LINE.finditer(path.read_text())}
    return rows


def recorded(queue: str, url: str = MAIN_URL, run: str | None = None) -> dict[int, dict]:
    """The results record of a run (default: the latest), as the --csv has it: row -> its one
    row (raises if a row comes twice)."""
    import tempfile

    from taskqueue.broker.config import BrokerSettings
    from taskqueue.results.history import History
    from taskqueue.results.table import task_rows

    with tempfile.TemporaryDirectory() as directory:
        history = History(BrokerSettings([url]), QueueSpec(queue), Path(directory))
        run = run or history.latest_run() or ""
        _table, rows = task_rows(run, history.run_records(run))
        table: dict[int, dict] = {}
        for row in rows:
            assert int(row["row"]) not in table, f"row {row['row']} twice in the record's CSV"
            table[int(row["row"])] = row
        return table


def queue_state(name: str, url: str = MAIN_URL) -> tuple[int, int] | None:
    """(ready messages, consumers) of a queue, by a passive declare; None if there is none."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        frame = connection.channel().queue_declare(name, passive=True)
        return frame.method.message_count, frame.method.consumer_count
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return None
        raise
    finally:
        connection.close()


def queue_settles_at(name: str, expected: tuple[int, int], url: str = MAIN_URL,
                     timeout: float = 10) -> None:
    """Waits until a queue's (ready messages, consumers) read *expected*. The broker drops a gone
    worker's subscription a moment after its connection closed (a quorum queue hears of it
    through its own log), so a count read once right after a worker's exit can be early."""
    seen: list[tuple[int, int] | None] = []

    def settled() -> bool:
        seen.append(queue_state(name, url))
        return seen[-1] == expected
    try:
        wait_for(settled, timeout=timeout, interval=0.1)
    except AssertionError:
        raise AssertionError(f"{name}: (ready, consumers) is {seen[-1]}, not {expected}, "
                             f"after {timeout} s") from None


def unacked(name: str, node: str = "rabbit@localhost") -> int:
    out = subprocess.run(["rabbitmqctl", "-n", node, "list_queues", "-q", "--no-table-headers",
                          "name", "messages_unacknowledged"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == name:
            return int(parts[1])
    raise AssertionError(f"queue {name} not found")


def queue_names(prefix: str, node: str = "rabbit@localhost") -> set[str]:
    """Names of the queues and streams on the main broker's node that start with *prefix*
    (rabbitmqctl: the management API may not be there). Raises OSError or SubprocessError
    when rabbitmqctl cannot tell."""
    out = subprocess.run(["rabbitmqctl", "-n", node, "list_queues", "-q", "--no-table-headers",
                          "name"], capture_output=True, text=True, check=True, timeout=60).stdout
    return {line for line in out.splitlines() if line.startswith(prefix)}


def drain(name: str, url: str = MAIN_URL) -> list[tuple[pika.BasicProperties, bytes]]:
    """Take every ready message off a queue (acked) and return them."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    messages = []
    try:
        channel = connection.channel()
        while True:
            method, properties, body = channel.basic_get(name, auto_ack=True)
            if method is None:
                return messages
            messages.append((properties, body))
    finally:
        connection.close()


def publish_raw(name: str, bodies: list[bytes], url: str = MAIN_URL) -> None:
    """Publish bodies as they are (for bad-message tests), persistent, confirmed."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(name, durable=True)
        for number, body in enumerate(bodies, start=1):
            channel.basic_publish("", name, body, pika.BasicProperties(
                delivery_mode=2, message_id=f"raw:{number}:0"))
    finally:
        connection.close()


def delete_queues(base: str, url: str = MAIN_URL) -> None:
    """Delete every queue and stream of *base* (``QueueSpec(base).everything``) and its events
    exchange; a missing one is no error. One channel per operation: a 404 closes it."""
    spec = QueueSpec(base)
    try:
        connection = pika.BlockingConnection(pika.URLParameters(url))
    except pika.exceptions.AMQPError:
        return
    operations = [lambda channel, name=name: channel.queue_delete(name)
                  for name in spec.everything]
    operations.append(lambda channel: channel.exchange_delete(spec.exchange))
    try:
        for operation in operations:
            channel = connection.channel()
            try:
                operation(channel)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != 404:
                    raise
                continue
            channel.close()
    finally:
        if connection.is_open:
            connection.close()


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("".join(row + "\n" for row in rows), encoding="utf-8")
    return path


def consume_all(name: str, url: str = MAIN_URL, quiet_for: float = 1.0) -> list:
    """Take every message off a queue quickly (prefetch 1000, auto-ack): [(properties, body)]."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    messages = []
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=1000)
        for method, properties, body in channel.consume(name, auto_ack=True,
                                                        inactivity_timeout=quiet_for):
            if method is None:
                break
            messages.append((properties, body))
        channel.cancel()
    finally:
        connection.close()
    return messages
