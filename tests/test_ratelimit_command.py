"""task_control.py rate-limit (issue 31 item 1) against the broker: the command lands in
``<queue>.control`` as a rate-limit record (``off`` too), status shows the limit in force and
the tasks parked in ``<queue>.wait.<N>s``, and a bad RATE is one line and exit 2."""

from __future__ import annotations

import json

import pika
import pytest

from taskqueue.broker.config import QueueSpec
from taskqueue.errors import EXIT_BAD_INPUT
from tests.helpers import MAIN_URL, queue_state, run_script


def control(*args: str, logs) -> str:
    result = run_script("task_control.py", *args, "--url", MAIN_URL, log_dir=logs, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def commands_in(stream: str) -> list[dict]:
    """The control stream's records, from its first offset."""
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    records = []
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=100)
        for method, _properties, body in channel.consume(
                stream, inactivity_timeout=2.0, arguments={"x-stream-offset": "first"}):
            if method is None:
                break
            channel.basic_ack(method.delivery_tag)
            records.append(json.loads(body))
    finally:
        connection.close()
    return records


def status_line(queue: str, logs) -> str:
    shown = control("status", "--queue", queue, logs=logs)
    lines = [line for line in shown.splitlines() if "rate limit" in line]
    assert len(lines) == 1, shown
    return lines[0]


def test_rate_limit_and_off_land_in_the_control_stream_and_status_shows_them(queue, logs):
    spec = QueueSpec(queue)
    assert status_line(queue, logs) == "no rate limit"
    given = control("rate-limit", "20/s", "--per-key", "--queue", queue, logs=logs)
    assert f"rate limit 20/s per key on queue {queue!r} (by " in given, given
    assert "no worker is running" in given, given
    [record] = commands_in(spec.control_name)
    assert {key: record[key] for key in ("command", "per_second", "text", "per_key")} == {
        "command": "rate-limit", "per_second": 20.0, "text": "20/s", "per_key": True}
    assert record["id"] and record["time"] and "@" in record["by"]
    assert status_line(queue, logs) == f"rate limit 20/s per key (by {record['by']})"

    control("rate-limit", "90/min", "--queue", queue, logs=logs)
    assert status_line(queue, logs).startswith("rate limit 1.5/s (by ")

    off = control("rate-limit", "off", "--queue", queue, logs=logs)
    assert f"rate limit off on queue {queue!r}" in off, off
    last = commands_in(spec.control_name)[-1]
    assert (last["command"], last["per_second"], last["text"], last["per_key"]) == (
        "rate-limit", None, "off", False)
    assert status_line(queue, logs) == "no rate limit"


def test_status_counts_the_tasks_parked_in_the_tiers(queue, logs):
    spec = QueueSpec(queue)
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        # Plain queues stand for two tiers (no TTL: the tasks stay while status counts them).
        for name, count in ((spec.wait_names[1], 3), (spec.wait_names[5], 2)):
            channel.queue_declare(name, durable=True)
            for n in range(count):
                channel.basic_publish("", name, f"task {n}".encode())
    finally:
        connection.close()
    control("rate-limit", "2.5/s", "--queue", queue, logs=logs)
    assert status_line(queue, logs).endswith("; 5 tasks parked")
    control("rate-limit", "off", "--queue", queue, logs=logs)
    assert status_line(queue, logs) == "no rate limit; 5 tasks parked"


@pytest.mark.parametrize("args", [("0/s",), ("fast",), ("6000/s",), ("20/day",), ("-1/s",),
                                  ("off", "--per-key"), ()])
def test_a_bad_rate_is_one_line_and_exit_2(queue, logs, args):
    result = run_script("task_control.py", "rate-limit", *args, "--queue", queue, "--url",
                        MAIN_URL, log_dir=logs)
    assert result.returncode == EXIT_BAD_INPUT, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr and not result.stdout
    assert queue_state(QueueSpec(queue).control_name) is None, "nothing was given"
