"""The real scripts against the real broker on 127.0.0.1:5672, one queue per test."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pika
import pytest

from taskqueue.wire.messages import row_of
from tests.helpers import (
    MAIN_URL,
    ROOT,
    consumers,
    done_rows,
    queue_settles_at,
    queue_state,
    run_script,
    script_env,
    start_worker,
    wait_for,
    write_csv,
)
from tests.stopping import all_settled, stop_when


@pytest.mark.windows
def test_three_workers_share_a_csv_each_task_done_once(queue, logs, tmp_path):
    rows = [f"task {n}" + "." * (n % 4) for n in range(1, 31)]
    csv = write_csv(tmp_path / "tasks.csv", rows)
    outs = [tmp_path / f"w{n}.out" for n in range(3)]
    # No idle exit: the workers are there before the tasks (to share them), and a slow start of
    # the emitter must not race their timers; they are stopped once every task is settled.
    workers = [start_worker("--queue", queue, "--name", f"w{n}", "--seconds-per-dot", "0.01",
                            log_dir=logs, out=out)
               for n, out in enumerate(outs)]
    wait_for(lambda: consumers(queue) == 3, what="3 consumers")
    emitted = run_script("emitter_of_tasks.py", "--queue", queue, "--file", str(csv), log_dir=logs)
    assert emitted.returncode == 0, emitted.stderr
    assert "30 rows read, 30 confirmed, 0 rejected" in emitted.stdout
    assert stop_when(all_settled(outs, 30, queue), queue, workers, log_dir=logs,
                     what="the 30 tasks done") == [0, 0, 0]

    done = done_rows(*outs)
    assert sorted(row for _, row in done) == list(range(1, 31)), "each task exactly once"
    assert {worker for worker, _ in done} == {"w0", "w1", "w2"}, "every worker did some"
    # none ready, none unacked: no consumer is left
    queue_settles_at(queue, (0, 0))
    summary = outs[0].read_text()
    assert re.search(r"worker w0: \d+ done", summary), summary[-300:]
    assert sum(int(re.search(r"worker w\d: (\d+) done", out.read_text())[1])
               for out in outs) == 30, "the summaries add up to the tasks done"
    assert (logs / "listening_worker.log").exists() and (logs / "emitter_of_tasks.log").exists()


@pytest.mark.windows
def test_row_text_arrives_exactly_as_written(queue, logs, tmp_path):
    csv = write_csv(tmp_path / "t.csv", ["Resize a.png, b.png...", "  padded, \"quoted\" ."])
    assert run_script("emitter_of_tasks.py", "--queue", queue, "--file", str(csv),
                      log_dir=logs).returncode == 0
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    channel = connection.channel()
    bodies, props = [], []
    for _ in range(2):
        _method, properties, body = channel.basic_get(queue, auto_ack=True)
        bodies.append(body.decode())
        props.append(properties)
    connection.close()
    assert bodies == ["Resize a.png, b.png...", "  padded, \"quoted\" ."]
    assert all(p.delivery_mode == 2 and p.message_id for p in props)
    assert row_of(props[0].message_id) == 1 and props[0].correlation_id, "row and run id"


@pytest.mark.windows
def test_messages_from_the_command_line_and_stdin(queue, logs):
    result = run_script("emitter_of_tasks.py", "--queue", queue, "--message", "one.",
                        "--message", "two..", log_dir=logs)
    assert result.returncode == 0 and "2 confirmed" in result.stdout
    result = run_script("emitter_of_tasks.py", "--queue", queue, "--file", "-",
                        input="three.\nfour.\n", log_dir=logs)
    assert result.returncode == 0 and "2 confirmed" in result.stdout
    assert queue_state(queue)[0] == 4


@pytest.mark.windows
def test_killed_worker_task_is_done_by_another(queue, logs, tmp_path):
    slow = start_worker("--queue", queue, "--name", "doomed", "--seconds-per-dot", "1",
                        log_dir=logs, out=tmp_path / "doomed.out")
    wait_for(lambda: consumers(queue) == 1, what="first worker")
    run_script("emitter_of_tasks.py", "--queue", queue, "--message", "long.....", log_dir=logs)
    wait_for(lambda: "received" in (tmp_path / "doomed.out").read_text(), what="task received")
    slow.kill()  # SIGKILL; TerminateProcess on Windows
    slow.wait(timeout=10)
    # Its idle timer must not race the broker's requeue: start it once the task waits again.
    wait_for(lambda: (queue_state(queue) or (0, 0))[0] == 1,
             what="the killed worker's task back in the queue")
    rescuer = start_worker("--queue", queue, "--name", "rescuer", "--seconds-per-dot", "0.01",
                           "--exit-when-idle", "1.5", log_dir=logs, out=tmp_path / "rescuer.out")
    assert rescuer.wait(timeout=60) == 0
    out = (tmp_path / "rescuer.out").read_text()
    assert re.search(r"\[rescuer\] received row 1, [^\n]*\(redelivered", out), out
    assert "done row 1" in out and "1 redelivered" in out
    queue_settles_at(queue, (0, 0))


@pytest.mark.windows
def test_emitter_without_a_terminal_never_asks(queue, logs):
    result = run_script("emitter_of_tasks.py", "--queue", queue, "--message", "x", log_dir=logs,
                        timeout=20)
    assert result.returncode == 0
    assert "Would you like" not in result.stdout + result.stderr


@pytest.mark.windows
def test_admin_with_the_panel_down_says_how_to_enable_it(queue, logs):
    result = run_script("emitter_of_tasks.py", "--queue", queue, "--message", "x", "--admin",
                        "--admin-url", "http://127.0.0.1:9/#/queues", log_dir=logs, timeout=20)
    assert result.returncode == 0
    assert "http://127.0.0.1:9/#/queues" in result.stdout
    assert "does not answer" in result.stdout
    assert "rabbitmq-plugins enable rabbitmq_management" in result.stdout


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal (pty)")
def test_emitter_on_a_terminal_asks_and_takes_no_for_an_answer(queue, logs):
    import pty

    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, str(ROOT / "emitter_of_tasks.py"), "--queue", queue,
                             "--message", "x"], stdin=terminal, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=script_env(logs), cwd=ROOT)
    os.write(controller, b"n\n")
    out, err = proc.communicate(timeout=30)
    os.close(controller)
    os.close(terminal)
    assert proc.returncode == 0, err
    assert "Would you like to monitor RabbitMQ queues? y or n" in out
    assert "admin panel" not in out and "1 confirmed" in out
