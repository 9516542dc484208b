"""Retention (issue 31, item 6): the control stream bounded when made, an unbounded one of
older versions still used; ``task_control.py retention`` giving the rabbitmqctl line when the
management API is not there, that line bounding a stream that exists; ``task_control.py
status`` showing each stream's extent; a report of a run partly past retention saying how many
tasks' records are gone. On the real broker; the policies set here match only the test's own
queue names and are cleared afterwards."""

from __future__ import annotations

import json
import shlex
import time

import pika
import pytest

from taskqueue.broker.config import QueueSpec
from taskqueue.broker.on_demand import CONTROL_MAX_BYTES, declare_control
from taskqueue.control import commands
from taskqueue.control.retention import (
    Management,
    StreamPolicy,
    parse_bytes,
    retention_in_effect,
)
from taskqueue.control.state import command
from taskqueue.control.stream_size import measure
from taskqueue.wire.events import run_event, task_event
from taskqueue.wire.record import encode_group, new_run_id
from tests.brokers import ctl
from tests.helpers import MAIN_URL, run_script, wait_for

NODE = "rabbit@localhost"


def blocking(url: str = MAIN_URL) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(url))


def arguments_of(name: str) -> str:
    """The stream's x-arguments as rabbitmqctl lists them."""
    out = ctl(NODE, "list_queues", "-q", "--no-table-headers", "name", "arguments").stdout
    return next(line for line in out.splitlines() if line.split("\t")[0] == name)


def make_stream(name: str, url: str = MAIN_URL, **arguments: object) -> None:
    connection = blocking(url)
    try:
        connection.channel().queue_declare(name, durable=True, arguments={
            "x-queue-type": "stream", **arguments})
    finally:
        connection.close()


def publish(name: str, bodies: list[bytes], url: str = MAIN_URL) -> None:
    connection = blocking(url)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for body in bodies:
            channel.basic_publish("", name, body)
    finally:
        connection.close()


def declare_async(spec: QueueSpec) -> str:
    """declare_control as a worker's listener runs it: 'done' or the refusal's text."""
    said: list[str] = []
    connection = pika.SelectConnection(pika.URLParameters(MAIN_URL), on_open_callback=lambda
                                       conn: declare_control(conn, spec, lambda: finish("done"),
                                                             lambda exc: finish(repr(exc))))

    def finish(what: str) -> None:
        said.append(what)
        connection.close()

    connection.ioloop.call_later(30, connection.close)
    connection.add_on_close_callback(lambda _conn, _reason: connection.ioloop.stop())
    connection.ioloop.start()
    return said[0] if said else "no answer in 30 s"


def test_the_control_stream_is_bounded_when_made_and_an_unbounded_one_is_still_used(queue):
    made, older = QueueSpec(queue), QueueSpec(f"{queue}.old")
    connection = blocking()
    try:
        commands.append(connection, made, command("pause"))
    finally:
        connection.close()
    assert f"x-max-length-bytes\",{CONTROL_MAX_BYTES}" in arguments_of(made.control_name)
    assert "x-max-age" not in arguments_of(made.control_name), "a pause never expires by age"

    make_stream(older.control_name)  # as versions before this one made it: no bound
    try:
        connection = blocking()
        try:
            commands.append(connection, older, command("resume"))  # task_control.py's path
        finally:
            connection.close()
        assert declare_async(older) == "done"  # the worker's listener's path
        assert declare_async(made) == "done"
        assert "x-max-length-bytes" not in arguments_of(older.control_name), "used as it is"
    finally:
        connection = blocking()
        connection.channel().queue_delete(older.control_name)
        connection.close()


def test_retention_without_the_management_api_gives_the_line_that_bounds_a_stream_that_exists(
        queue, logs):
    spec = QueueSpec(queue)
    make_stream(spec.results_name, **{"x-stream-max-segment-size-bytes": 2000})
    body = encode_group([{"kind": "task", "finished": time.time(), "text": "x" * 150}])
    publish(spec.results_name, [body] * 60)
    connection = blocking()
    try:
        before = measure(connection, spec.results_name)
    finally:
        connection.close()
    assert before.first == 0 and before.last is not None and before.last >= 59

    result = run_script("task_control.py", "retention", "--queue", queue, "--max-bytes", "4000",
                        "--management-url", "http://127.0.0.1:1", log_dir=logs)
    assert result.returncode == 3, result
    assert "nothing was set" in result.stderr and len(result.stderr.splitlines()) == 1
    line = result.stdout.strip()
    assert line == StreamPolicy(spec.results_name, None, 4000).rabbitmqctl_line("/")
    words = shlex.split(line)
    assert words[:2] == ["rabbitmqctl", "set_policy"]
    name = words[-3]
    try:
        assert ctl(NODE, *words[1:]).returncode == 0
        listed = ctl(NODE, "list_queues", "-q", "--no-table-headers", "name", "policy").stdout
        assert f"{spec.results_name}\t{name}" in listed.splitlines()
        connection = blocking()
        try:
            after = measure(connection, spec.results_name)  # applied at once, no new message
        finally:
            connection.close()
        assert after.last == before.last and after.first, (after.first, after.last)
        status = run_script("task_control.py", "status", "--queue", queue, log_dir=logs)
        assert status.returncode == 0, status.stderr
        assert (f"{spec.results_name}: about {before.last + 1 - after.first} messages "
                f"(offsets {after.first}-{before.last})" in status.stdout), status.stdout
        assert f"offsets before {after.first} removed by retention" in status.stdout
        assert f"{spec.control_name}: does not exist" in status.stdout
    finally:
        assert ctl(NODE, "clear_policy", name).returncode == 0


def test_a_report_of_a_run_partly_past_retention_says_how_many_tasks_records_are_gone(
        queue, logs, tmp_path):
    spec = QueueSpec(queue)
    # About 100 records of 500 bytes on disk: 40 KB keeps all but the oldest few segments.
    make_stream(spec.results_name, **{"x-max-length-bytes": 40000,
                                      "x-stream-max-segment-size-bytes": 4000})
    run = new_run_id(suffix="ab12cd")
    now = time.time()

    def task(row: int) -> bytes:
        return encode_group([task_event(
            run_id=run, worker="w1", host="h", message_id=f"m{row}", row=row, task=f"t{row}",
            outcome="done", received=now, started=now, seconds=0.01, attempt=1,
            redelivered=False, result="ok")])

    publish(spec.results_name, [
        encode_group([run_event(run, queue, "started", 100, 0)]),
        *(task(row) for row in range(1, 46)),
        encode_group([run_event(run, queue, "finished", 100, 100)]),
        *(task(row) for row in range(46, 101))])
    connection = blocking()
    try:
        kept = measure(connection, spec.results_name)
    finally:
        connection.close()
    assert kept.first and kept.first > 1, "the start record and some tasks' are gone"
    assert kept.first < 45, "the finished record (the run's total) is kept"

    result = run_script("task_report.py", "--queue", queue, "--run", run, "--reports-dir",
                        str(tmp_path / "reports"), log_dir=logs)
    assert result.returncode == 0, result.stderr
    done = int(next(line for line in result.stdout.splitlines()
                    if line.startswith(f"run {run}")).split(": ")[1].split()[0])
    assert done < 100
    assert (f"{100 - done} of the 100 tasks it published have no record left"
            in result.stdout), result.stdout
    assert "still queued, in hand or retrying" not in result.stdout


def test_retention_through_the_management_api_names_a_policy_it_would_replace(panel_node,
                                                                               logs):
    queue, url = "retention_q", panel_node.url
    stream = QueueSpec(queue).results_name
    make_stream(stream, url, **{"x-stream-max-segment-size-bytes": 2000})
    body = encode_group([{"kind": "task", "finished": time.time(), "text": "x" * 150}])
    publish(stream, [body] * 60, url)
    assert panel_node.ctl("set_policy", "--apply-to", "queues", "theirs", r"^retention_q\.",
                          '{"max-age": "1D"}').returncode == 0
    panel = f"http://127.0.0.1:{panel_node.panel_port}/#/queues"  # the panel's URL works too
    given = ("task_control.py", "retention", "--url", url, "--queue", queue, "--max-bytes",
             "4000", "--max-age", "7D", "--management-url", panel)

    refused = run_script(*given, log_dir=logs)
    assert refused.returncode == 4, refused
    assert "'theirs'" in refused.stderr and "--replace" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1
    listed = panel_node.ctl("list_queues", "-q", "--no-table-headers", "name", "policy").stdout
    assert f"{stream}\ttheirs" in listed.splitlines(), "nothing was set"

    result = run_script(*given, "--replace", log_dir=logs)
    assert result.returncode == 0, result
    assert f"retention of {stream!r}: 7D and at most 4.0 KB" in result.stdout
    assert "'theirs'" in result.stdout
    ours = StreamPolicy(stream, "7D", 4000)
    policies = panel_node.ctl("list_policies", "--formatter", "json").stdout
    mine = next(p for p in json.loads(policies[policies.index("["):])
                if p["name"] == ours.name)
    definition = mine["definition"]
    definition = json.loads(definition) if isinstance(definition, str) else definition
    assert mine["priority"] == 10 and definition == ours.definition(), mine
    listed = panel_node.ctl("list_queues", "-q", "--no-table-headers", "name", "policy").stdout
    assert f"{stream}\t{ours.name}" in listed.splitlines()
    connection = blocking(url)
    try:
        assert measure(connection, stream).first, "applied to the stream that exists, at once"
    finally:
        connection.close()

    def status() -> str:
        """status's line for the stream once the API's statistics (every 5 s) name ours."""
        shown = run_script("task_control.py", "status", "--url", url, "--queue", queue,
                           "--management-url", panel, log_dir=logs).stdout
        return shown if f"policy {ours.name!r}" in shown else ""

    line = next(line for line in wait_for(status, what="the policy in status").splitlines()
                if line.startswith(stream))
    assert line.endswith(f"; retention: max-age 7D (policy {ours.name!r}), max-length-bytes "
                         f"4.0 KB (policy {ours.name!r})"), line


@pytest.mark.fast
def test_sizes_and_the_policy_definition():
    assert parse_bytes("20GB") == 20 * 10**9 and parse_bytes("1.5MB") == 1_500_000
    assert parse_bytes("4000") == 4000
    with pytest.raises(ValueError):
        parse_bytes("12XB")
    policy = StreamPolicy("a.b-c.results", "30D", 20 * 10**9)
    assert policy.pattern == r"^a\.b\-c\.results$"
    assert policy.body(10, {"ha-mode": "all", "max-age": "1D"})["definition"] == {
        "ha-mode": "all", "max-age": "30D", "max-length-bytes": 20 * 10**9,
        "stream-max-segment-size-bytes": 100 * 10**6}
    assert json.loads(shlex.split(policy.rabbitmqctl_line("/"))[-1]) == policy.definition()
    assert "-p vh" in StreamPolicy("q.results", "1D", None).rabbitmqctl_line("vh")
    api = Management.for_broker("amqp://u:p%40ss@h:5673/vh", "http://admin:s3cret@h:15672/#/")
    assert (api.base, api.user, api.password, api.vhost) == ("http://h:15672", "admin",
                                                             "s3cret", "vh")
    assert Management.for_broker("amqps://u:pw@h/").base == "https://h:15672"
    assert Management.for_broker("amqps://u:pw@h/").password == "pw"


@pytest.mark.fast
def test_the_retention_in_effect_takes_each_key_from_the_policy_else_as_made():
    queue = {"arguments": {"x-queue-type": "stream", "x-max-age": "30D",
                           "x-max-length-bytes": 20 * 10**9},
             "policy": "ours", "effective_policy_definition": {"max-length-bytes": 4000}}
    assert retention_in_effect(queue) == ("retention: max-age 30D (as made), max-length-bytes "
                                          "4.0 KB (policy 'ours')")
    assert retention_in_effect({"arguments": {"x-queue-type": "stream"}}) == \
        "retention: none (kept for ever)"
