"""A failed urgent task's retry stays urgent (worker/lanes.py, policy.py ``after_work``): it
waits its delay in ``<queue>.urgent.retry``, which dead-letters it back to ``<queue>.urgent``,
so it runs again before the normal backlog, not behind it. Real broker, one worker; runs on
RabbitMQ 4.3 too (scripts/rabbitmq4.sh test tests/test_urgent_retry.py). The logic without a
broker: tests/test_fast_give_back_gaps.py."""

from __future__ import annotations

from pathlib import Path

import pika

from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.broker.urgent import urgent_name, urgent_retry_name
from taskqueue.results.history import History
from tests.brokers import ctl
from tests.helpers import (
    MAIN_URL,
    drain,
    emit_run,
    queue_state,
    recorded,
    run_script,
    start_worker,
    wait_for,
    write_csv,
)

NORMAL = 30  # 0.1 s each: a backlog of 3 s behind which the old retry waited


def attempts(queue: str, run: str, directory: Path) -> list[dict]:
    history = History(BrokerSettings([MAIN_URL]), QueueSpec(queue), directory)
    return [r for r in history.run_records(run)() if r.get("kind") in (None, "task")]


def test_an_urgent_tasks_retry_comes_back_urgent_before_the_normal_backlog(
        queue: str, logs: Path, tmp_path: Path):
    normal = write_csv(tmp_path / "normal.csv", [f"n{n}." for n in range(1, NORMAL + 1)])
    normal_run = emit_run("--queue", queue, "--file", str(normal), logs=logs)
    urgent_run = emit_run("--queue", queue, "--priority", "high", "--message", "boom",
                          logs=logs)
    out = tmp_path / "w.out"
    worker = start_worker("--queue", queue, "--handler", "tests.handlers:dots_fail_on_boom",
                          "--max-retries", "1", "--retry-delay", "0.3", "--exit-when-idle",
                          "1.5", log_dir=logs, out=out)
    assert worker.wait(timeout=120) == 0, out.read_text()[-3000:]
    said = out.read_text()
    assert "could not use" not in said, said[-3000:]

    boom = sorted(attempts(queue, urgent_run, tmp_path / "u"), key=lambda r: float(r["started"]))
    assert [r["outcome"] for r in boom] == ["failed", "dead"], boom
    normal_starts = sorted(float(r["started"]) for r in attempts(queue, normal_run,
                                                                   tmp_path / "n"))
    assert len(normal_starts) == NORMAL
    behind = [s for s in normal_starts if s < float(boom[1]["started"])]
    assert len(behind) < NORMAL // 2, (len(behind), "normal tasks started before the retry")

    [(properties, body)] = drain(QueueSpec(queue).dead_name)
    assert body == b"boom"
    [death] = (properties.headers or {})["x-death"]
    where = death["queue"]
    assert (where.decode() if isinstance(where, bytes) else where) == urgent_retry_name(queue), \
        "its retry waited in <queue>.urgent.retry"
    assert queue_state(urgent_retry_name(queue)) == (0, 0)
    assert queue_state(urgent_name(queue)) == (0, 0)


def test_without_permission_on_its_retry_queue_the_retry_goes_through_the_retry_queue(
        node, logs: Path, tmp_path: Path):
    """Permissions that name ``.urgent`` but not ``.urgent.retry``: one line says so, and the
    urgent task's retry goes through ``<queue>.retry`` (to the task queue), as before."""
    assert ctl(node.node, "add_user", "noretry", "pw").returncode == 0
    allowed = r"^nort_q(\.retry|\.dead|\.control|\.events|\.results|\.urgent)?$|^amq\.default$"
    assert ctl(node.node, "set_permissions", "noretry", allowed, allowed,
               allowed).returncode == 0
    url = f"amqp://noretry:pw@127.0.0.1:{node.port}/%2F"
    run = emit_run("--url", url, "--queue", "nort_q", "--priority", "high", "--message", "boom",
                   logs=logs)
    worker = run_script("listening_worker.py", "--url", url, "--queue", "nort_q", "--handler",
                        "tests.handlers:fail_on_boom", "--max-retries", "1", "--retry-delay",
                        "0.3", "--exit-when-idle", "1.5", log_dir=logs)
    assert worker.returncode == 0, worker.stdout[-2000:] + worker.stderr
    assert worker.stdout.count("could not use 'nort_q.urgent.retry'") == 1, worker.stdout
    guest = f"amqp://guest:guest@127.0.0.1:{node.port}/%2F"
    assert recorded("nort_q", url=guest, run=run)[1]["outcome"] == "dead"
    [(properties, _body)] = drain("nort_q.dead", url=guest)
    [death] = (properties.headers or {})["x-death"]
    where = death["queue"]
    assert (where.decode() if isinstance(where, bytes) else where) == "nort_q.retry"


def test_an_urgent_retry_whose_queue_was_deleted_goes_through_the_retry_queue(
        queue: str, logs: Path, tmp_path: Path):
    """``<queue>.urgent.retry`` deleted while the worker runs (it is made on demand, not by the
    outbox's re-declare of the standard queues): the retry comes back unroutable and goes
    through ``<queue>.retry`` instead, once, and the task ends dead after its one retry (the
    old code sent it back to the deleted queue, had it refused, nacked it and ran it again,
    without end)."""
    out = tmp_path / "w.out"
    worker = start_worker("--queue", queue, "--handler", "tests.handlers:fail_on_boom",
                          "--max-retries", "1", "--retry-delay", "0.3", "--exit-when-idle",
                          "2", log_dir=logs, out=out)
    wait_for(lambda: queue_state(urgent_retry_name(queue)) is not None and
             "waiting for tasks" in out.read_text(), timeout=60, what="the worker consuming")
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    connection.channel().queue_delete(urgent_retry_name(queue))
    connection.close()
    run = emit_run("--queue", queue, "--priority", "high", "--message", "boom", logs=logs)
    assert worker.wait(timeout=60) == 0, out.read_text()[-3000:]
    said = out.read_text()
    assert said.count(f"queue '{urgent_retry_name(queue)}' is gone") == 1, said[-3000:]
    assert [r["outcome"] for r in sorted(attempts(queue, run, tmp_path / "u"),
                                         key=lambda r: float(r["started"]))] == \
        ["failed", "dead"]
    [(properties, _body)] = drain(QueueSpec(queue).dead_name)
    [death] = (properties.headers or {})["x-death"]
    where = death["queue"]
    assert (where.decode() if isinstance(where, bytes) else where) == QueueSpec(queue).retry_name
