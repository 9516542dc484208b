"""Fault tolerance against real brokers: restarts, long tasks, poison messages, stops, resume.

Tests that restart or reconfigure a broker use a throwaway node of their own (tests/brokers.py);
the others use a queue of their own on the main broker."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter

from taskqueue.tasks import row_of
from tests.brokers import ctl
from tests.helpers import (
    consume_all,
    consumers,
    delete_queues,
    done_rows,
    publish_raw,
    queue_state,
    run_script,
    start_script,
    start_worker,
    unacked,
    wait_for,
    write_csv,
)


def start_emitter(*args: str, log_dir, out) -> subprocess.Popen:
    return start_script("emitter_of_tasks.py", *args, log_dir=log_dir, out=out)


def rows_of(messages) -> Counter:
    return Counter(row_of(properties.message_id) for properties, _ in messages)


def test_200_tasks_3_workers_survive_two_broker_restarts(node, logs, tmp_path):
    queue = "restart_q"
    csv = write_csv(tmp_path / "t.csv", [f"task {n}" + "." * (1 + n % 3) for n in range(200)])
    outs = [tmp_path / f"w{n}.out" for n in range(3)]
    workers = [start_worker("--url", node.url, "--queue", queue, "--name", f"w{n}",
                            "--seconds-per-dot", "0.05", "--exit-when-idle", "6",
                            log_dir=logs, out=out) for n, out in enumerate(outs)]
    wait_for(lambda: consumers(queue, node.url) == 3, what="3 consumers")
    assert run_script("emitter_of_tasks.py", "--url", node.url, "--queue", queue, "--file",
                      str(csv), log_dir=logs).returncode == 0
    for _ in range(2):
        time.sleep(1.5)
        node.restart(down_for=0.5)
    assert [w.wait(timeout=120) for w in workers] == [0, 0, 0], "workers end alive and well"
    done = done_rows(*outs)
    assert {row for _, row in done} == set(range(1, 201)), "no task lost"
    assert all("connected again" in out.read_text() for out in outs)
    assert queue_state(queue, node.url) == (0, 0)


def test_emitter_publishes_every_row_while_the_broker_restarts(node, logs, tmp_path):
    queue = "emit_restart_q"
    csv = write_csv(tmp_path / "t.csv", [f"row {n}." for n in range(20_000)])
    out = tmp_path / "emitter.out"
    emitter = start_emitter("--url", node.url, "--queue", queue, "--file", str(csv),
                            "--confirm-window", "50", log_dir=logs, out=out)
    wait_for(lambda: (queue_state(queue, node.url) or (0, 0))[0] > 2000, interval=0.01,
             what="publishing under way")
    node.restart(down_for=1.0)
    assert emitter.wait(timeout=120) == 0, out.read_text()
    text = out.read_text()
    assert "connected again" in text and "published again" in text
    rows = rows_of(consume_all(queue, node.url))
    assert set(rows) == set(range(1, 20_001)), "every row is in the queue"
    duplicates = sum(rows.values()) - 20_000
    assert duplicates <= 50, "duplicates only among the unconfirmed window"


def test_worker_waits_for_a_broker_that_is_down_at_start(node, logs, tmp_path):
    node.stop_app()
    out = tmp_path / "w.out"
    worker = start_worker("--url", node.url, "--queue", "late_q", "--seconds-per-dot", "0",
                          "--exit-when-idle", "1", "--connect-timeout", "30", log_dir=logs, out=out)
    wait_for(lambda: "retrying in" in out.read_text(), what="a retry")
    node.start_app()
    assert worker.wait(timeout=60) == 0
    assert "connected to" in out.read_text()


def test_ten_second_task_on_a_heartbeat_2_broker(heartbeat_node, logs, tmp_path):
    queue = "long_task_q"
    out = tmp_path / "w.out"
    worker = start_worker("--url", heartbeat_node.url, "--queue", queue, "--name", "patient",
                          "--seconds-per-dot", "1", "--exit-when-idle", "1.5",
                          log_dir=logs, out=out)
    wait_for(lambda: consumers(queue, heartbeat_node.url) == 1, what="worker")
    listed = ctl(heartbeat_node.node, "list_connections", "-q", "--no-table-headers", "timeout")
    assert listed.stdout.split() == ["2"], "the broker really asks for 2 s heartbeats"
    assert run_script("emitter_of_tasks.py", "--url", heartbeat_node.url, "--queue", queue,
                      "--message", "ten dots..........", log_dir=logs).returncode == 0
    assert worker.wait(timeout=60) == 0
    text = out.read_text()
    assert text.count("done row 1") == 1 and "(redelivered" not in text, text
    assert "0 redelivered" in text
    assert "lost" not in text
    assert queue_state(queue, heartbeat_node.url) == (0, 0)


def test_bad_messages_are_dead_lettered_and_good_ones_done(queue, logs, tmp_path):
    bad = [b"\xff\xfe not utf-8", b"", b"x" * 2000]
    good = [f"good {n}.".encode() for n in range(20)]
    publish_raw(queue, good[:10] + bad + good[10:])
    outs = [tmp_path / f"w{n}.out" for n in range(2)]
    workers = [start_worker("--queue", queue, "--name", f"w{n}", "--seconds-per-dot", "0.01",
                            "--max-task-bytes", "1000", "--exit-when-idle", "2",
                            log_dir=logs, out=out) for n, out in enumerate(outs)]
    assert [w.wait(timeout=60) for w in workers] == [0, 0], "bad messages kill no worker"
    assert len(done_rows(*outs)) == 20
    dead = consume_all(queue + ".dead")
    reasons = sorted(p.headers["x-death-reason"] for p, _ in dead)
    assert len(dead) == 3
    assert any("not UTF-8" in r for r in reasons) and any("empty" in r for r in reasons)
    assert any("exceeds 1000" in r for r in reasons)
    assert queue_state(queue) == (0, 0)


def test_failing_task_is_retried_then_dead_lettered(queue, logs, tmp_path):
    out = tmp_path / "w.out"
    worker = start_worker("--queue", queue, "--handler", "tests.handlers:fail_on_boom",
                          "--max-retries", "2", "--retry-delay", "1.2", "--exit-when-idle", "1",
                          log_dir=logs, out=out)
    assert run_script("emitter_of_tasks.py", "--queue", queue, "--message", "ok one",
                      "--message", "boom", "--message", "ok two", log_dir=logs).returncode == 0
    assert worker.wait(timeout=60) == 0
    text = out.read_text()
    assert "retry 1/2" in text and "retry 2/2" in text
    dead = consume_all(queue + ".dead")
    assert [body for _, body in dead] == [b"boom"]
    assert "failed 3 times" in dead[0][0].headers["x-death-reason"]
    assert dead[0][0].message_id, "the message id survives into the dead-letter queue"
    assert sorted(row for _, row in done_rows(out)) == [1, 3]
    assert "2 done, 3 failed attempts, 1 dead-lettered" in text


def test_sigterm_finishes_the_task_in_hand(queue, logs, tmp_path):
    out = tmp_path / "w.out"
    worker = start_worker("--queue", queue, "--seconds-per-dot", "0.5", log_dir=logs, out=out)
    wait_for(lambda: consumers(queue) == 1, what="worker")
    run_script("emitter_of_tasks.py", "--queue", queue, "--message", "four....",
               "--message", "next.", log_dir=logs)
    wait_for(lambda: "received" in out.read_text(), what="task in hand")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    text = out.read_text()
    assert "done row 1" in text and "row 2" not in text
    assert "1 done" in text
    assert queue_state(queue) == (1, 0) and unacked(queue) == 0, "next task waits, none stuck"


def test_second_ctrl_c_requeues_and_exits_at_once(queue, logs, tmp_path):
    out = tmp_path / "w.out"
    worker = start_worker("--queue", queue, "--seconds-per-dot", "10", log_dir=logs, out=out)
    wait_for(lambda: consumers(queue) == 1, what="worker")
    run_script("emitter_of_tasks.py", "--queue", queue, "--message", "very long.....",
               log_dir=logs)
    wait_for(lambda: "received" in out.read_text(), what="task in hand")
    worker.send_signal(signal.SIGINT)
    wait_for(lambda: "Ctrl+C again" in out.read_text(), what="first stop")
    started = time.monotonic()
    worker.send_signal(signal.SIGINT)
    assert worker.wait(timeout=10) == 0
    assert time.monotonic() - started < 5
    assert "requeued" in out.read_text()
    wait_for(lambda: queue_state(queue) == (1, 0), what="task back in the queue")


def test_interrupted_emitter_resumes_without_duplicates(queue, logs, tmp_path):
    total = 50_000
    csv = write_csv(tmp_path / "big.csv", [f"row {n}." for n in range(total)])
    out = tmp_path / "e.out"
    emitter = start_emitter("--queue", queue, "--file", str(csv), "--confirm-window", "20",
                            log_dir=logs, out=out)
    wait_for(lambda: (queue_state(queue) or (0, 0))[0] > 1000, interval=0.01, what="publishing")
    emitter.send_signal(signal.SIGINT)
    assert emitter.wait(timeout=60) == 0
    assert "stopped on request" in out.read_text() and "--resume" in out.read_text()
    first_part = queue_state(queue)[0]
    assert 0 < first_part < total
    resumed = run_script("emitter_of_tasks.py", "--queue", queue, "--file", str(csv), "--resume",
                         log_dir=logs, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    rows = rows_of(consume_all(queue))
    assert set(rows) == set(range(1, total + 1)) and max(rows.values()) == 1, "each row once"


def test_bad_row_stops_the_run_and_resume_continues_after_the_fix(queue, logs, tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"one.\ntwo.\nthree.\n\xff bad\nfive.\n")
    first = run_script("emitter_of_tasks.py", "--queue", queue, "--file", str(path), log_dir=logs)
    assert first.returncode == 2 and "line 4" in first.stderr and "--resume" in first.stderr
    assert queue_state(queue)[0] == 3
    path.write_bytes(b"one.\ntwo.\nthree.\nfour.\nfive.\n")
    second = run_script("emitter_of_tasks.py", "--queue", queue, "--file", str(path), "--resume",
                        log_dir=logs)
    assert second.returncode == 0, second.stderr
    assert sorted(rows_of(consume_all(queue)).elements()) == [1, 2, 3, 4, 5]


def test_a_worker_reports_a_slow_broker_ack_timeout_setting(queue, logs, tmp_path):
    """A task longer than consumer_timeout is announced with the setting's name."""
    out = tmp_path / "w.out"
    worker = start_worker("--queue", queue, "--seconds-per-dot", "1000", log_dir=logs, out=out)
    wait_for(lambda: consumers(queue) == 1, what="worker")
    run_script("emitter_of_tasks.py", "--queue", queue, "--message", "two..", log_dir=logs)
    wait_for(lambda: "consumer_timeout" in out.read_text(), what="the warning")
    for _ in range(2):
        worker.send_signal(signal.SIGINT)
        time.sleep(0.3)
    assert worker.wait(timeout=10) == 0




def test_missing_permissions_is_one_clear_line(node, logs):
    user = ctl(node.node, "add_user", "limited", "s3cret")
    assert user.returncode == 0, user.stderr
    ctl(node.node, "set_permissions", "limited", "^$", "^$", "^$")  # may connect, nothing else
    url = f"amqp://limited:s3cret@127.0.0.1:{node.port}/%2F"
    result = run_script("listening_worker.py", "--url", url, "--queue", "perm_q", log_dir=logs)
    assert result.returncode == 4, result.stderr
    assert "refused an operation on queue 'perm_q'" in result.stderr
    assert "permissions" in result.stderr and "s3cret" not in result.stdout + result.stderr


def test_rows_the_broker_refuses_are_an_error_not_a_skip(node, logs):
    """A policy caps the queue at 5 messages and refuses more: the broker nacks the rest."""
    policy = ctl(node.node, "set_policy", "cap", "^capped_q$",
                 '{"max-length": 5, "overflow": "reject-publish"}', "--apply-to", "queues")
    assert policy.returncode == 0, policy.stderr
    result = run_script("emitter_of_tasks.py", "--url", node.url, "--queue", "capped_q",
                        *[arg for n in range(8) for arg in ("--message", f"task {n}")],
                        log_dir=logs)
    assert result.returncode == 5, result.stdout + result.stderr
    assert "8 rows read, 5 confirmed, 3 rejected" in result.stdout
    assert "refused (nack)" in result.stdout
    assert "3 rows were refused by the broker" in result.stderr


def test_rows_returned_unroutable_are_counted_as_rejected(queue, logs, tmp_path):
    """The queue vanishes in mid-run: the broker returns what it cannot route (mandatory)."""
    csv = write_csv(tmp_path / "t.csv", [f"row {n}." for n in range(50_000)])
    out = tmp_path / "e.out"
    emitter = start_emitter("--queue", queue, "--file", str(csv), "--confirm-window", "20",
                            log_dir=logs, out=out)
    wait_for(lambda: (queue_state(queue) or (0, 0))[0] > 500, interval=0.01, what="publishing")
    delete_queues(queue)
    assert emitter.wait(timeout=120) == 5
    text = out.read_text()
    assert "returned: no queue" in text and "rejected" in text


def test_worker_subscribes_again_when_its_queue_is_deleted(queue, logs, tmp_path):
    out = tmp_path / "w.out"
    worker = start_worker("--queue", queue, "--seconds-per-dot", "0", "--exit-when-idle", "3",
                          log_dir=logs, out=out)
    wait_for(lambda: consumers(queue) == 1, what="worker")
    delete_queues(queue)
    wait_for(lambda: "subscribing again" in out.read_text(), what="the cancel")
    wait_for(lambda: consumers(queue) == 1, what="worker back on the new queue")
    run_script("emitter_of_tasks.py", "--queue", queue, "--message", "after.", log_dir=logs)
    assert worker.wait(timeout=30) == 0
    assert "done row 1" in out.read_text()


def test_emitter_waits_out_a_memory_alarm(node, logs, tmp_path):
    """With a memory alarm on, RabbitMQ blocks publishers; the emitter says so and finishes
    once the alarm clears."""
    out = tmp_path / "e.out"
    assert ctl(node.node, "set_vm_memory_high_watermark", "0.00001").returncode == 0
    try:
        emitter = start_emitter("--url", node.url, "--queue", "alarm_q", "--message", "a.",
                                "--message", "b.", log_dir=logs, out=out)
        wait_for(lambda: "blocking publishers" in out.read_text(), timeout=30, what="blocked")
        assert emitter.poll() is None, "still waiting, not failed"
    finally:
        ctl(node.node, "set_vm_memory_high_watermark", "0.4")
    assert emitter.wait(timeout=60) == 0, out.read_text()
    text = out.read_text()
    assert "accepts messages again" in text and "2 confirmed" in text
