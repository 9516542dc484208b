"""The tasks a rate limit parked, in the dashboard's /metrics, against a real ``task_report.py
--serve``, a real worker and the real broker (parked as tests/test_ratelimit_worker.py parks
them: three tasks of one key at 6/min after a quiet start). ``taskqueue_parked_tasks{queue}``
says 0 before any tier exists, the number parked while they wait in the tiers (as the tiers'
own depths say), and 0 again once they came back and ran; ``task_report.py --watch`` says
them too."""

from __future__ import annotations

import re

import pika
from prometheus_client.parser import text_string_to_metric_families

from taskqueue.broker.config import QueueSpec
from tests.dashboard import Dashboard, start_dashboard
from tests.helpers import (
    MAIN_URL,
    emit_run,
    run_script,
    start_script,
    start_worker,
    wait_for,
    write_csv,
)


def parked_gauge(board: Dashboard, queue: str) -> float | None:
    status, _headers, body = board.request("GET", "/metrics")
    assert status == 200, status
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "taskqueue_parked_tasks" and sample.labels["queue"] == queue:
                return sample.value
    return None


def in_tiers(queue: str) -> int:
    """The tasks in the queue's tiers, as the broker counts them (a missing tier: none)."""
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    try:
        found = 0
        for name in QueueSpec(queue).wait_names:
            channel = connection.channel()
            try:
                found += channel.queue_declare(name, passive=True).method.message_count
                channel.close()
            except pika.exceptions.ChannelClosedByBroker:
                pass
        return found
    finally:
        connection.close()


def test_metrics_count_the_tasks_a_rate_limit_parked(queue, logs, tmp_path):
    board = start_dashboard(queue, tmp_path, logs)
    try:
        wait_for(lambda: parked_gauge(board, queue) == 0, timeout=30,
                 what="the gauge at 0 (no tier yet)")
        tasks = write_csv(tmp_path / "tasks.csv",
                          ["job,host"] + [f"p{n}.,one.example" for n in range(1, 4)])
        emit_run("--queue", queue, "--file", str(tasks), "--header", "--column", "job",
                 "--key-column", "host", logs=logs)
        limited = run_script("task_control.py", "rate-limit", "6/min", "--per-key", "--queue",
                             queue, log_dir=logs)
        assert limited.returncode == 0, limited.stderr[-2000:]
        watched = tmp_path / "watch.out"  # the terminal's live view too, through a pipe
        watch = start_script("task_report.py", "--watch", "--queue", queue, log_dir=logs,
                             out=watched)
        out = tmp_path / "w1.out"
        worker = start_worker("--queue", queue, "--name", "w1", "--concurrency", "3",
                              "--seconds-per-dot", "0.02", "--exit-when-idle", "1",
                              log_dir=logs, out=out)
        seen: list[tuple[float | None, int]] = []

        def parked_now() -> bool:
            seen.append((parked_gauge(board, queue), in_tiers(queue)))
            return bool(seen[-1][0])

        wait_for(parked_now, timeout=60, interval=0.5, what="parked tasks in /metrics")
        gauge, tiers = seen[-1]
        assert 1 <= gauge <= 3, seen
        # Read a moment apart (the feed's every second): a task may come back in between.
        assert abs(gauge - tiers) <= 1, seen
        assert worker.wait(timeout=180) == 0, out.read_text()[-3000:]
        assert "parked (rate limit)" in out.read_text()
        wait_for(lambda: parked_gauge(board, queue) == 0, timeout=30,
                 what="the gauge back at 0 once they ran")
        assert in_tiers(queue) == 0
        watch.terminate()
        watch.wait(timeout=30)
        assert re.search(r"parked \(rate limit\): [123]\b", watched.read_text()), \
            watched.read_text()[-3000:]
    finally:
        board.stop()
