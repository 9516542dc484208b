"""Resource alarms on a throwaway node: while the broker blocks publishers, a worker finishes
the tasks in hand but cannot record their outcomes, so it holds them (unacked, nothing lost)
and takes no more; the emitter waits; the report keeps working; a stop still stops; after the
alarm everything drains and every outcome is recorded."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.brokers import close_connections_of, ctl
from tests.helpers import (
    consume_all,
    consumers,
    done_rows,
    queue_state,
    run_script,
    start_script,
    start_worker,
    wait_for,
    write_csv,
)
from tests.stopping import all_settled, stop_when


@pytest.fixture(scope="module")
def alarm_node():
    from tests.conftest import _node

    broker = _node([])
    yield broker
    broker.cleanup()


def alarms(node) -> str:
    return ctl(node.node, "eval", "rabbit_alarm:get_alarms().").stdout


def set_alarm(node, kind: str) -> None:
    if kind == "disk":
        assert ctl(node.node, "set_disk_free_limit", "100000GB").returncode == 0
    else:
        assert ctl(node.node, "set_vm_memory_high_watermark", "0.00001").returncode == 0
    wait_for(lambda: ("disk" if kind == "disk" else "memory") in alarms(node), timeout=30,
             interval=0.3, what=f"the {kind} alarm")


def clear_alarm(node, kind: str) -> None:
    if kind == "disk":
        ctl(node.node, "set_disk_free_limit", "50MB")
    else:
        ctl(node.node, "set_vm_memory_high_watermark", "0.4")
    wait_for(lambda: "resource_limit" not in alarms(node), timeout=60, interval=0.3,
             what="the alarm to clear")


@pytest.mark.parametrize("kind", ["disk", "memory"])
def test_an_alarm_holds_the_acks_until_the_outcomes_are_recorded(kind, alarm_node, logs,
                                                                 tmp_path):
    node = alarm_node
    queue = f"alarm_{kind}_q"
    first = write_csv(tmp_path / "first.csv", [f"first {n}." for n in range(300)])
    later = write_csv(tmp_path / "later.csv", [f"later {n}." for n in range(20)])
    outs = [tmp_path / f"w{n}.out" for n in range(2)]
    workers = [start_worker("--url", node.url, "--queue", queue, "--name", f"w{n}",
                            "--seconds-per-dot", "0.05", log_dir=logs, out=out)
               for n, out in enumerate(outs)]  # no idle exit: they run before the publish
    wait_for(lambda: consumers(queue, node.url) == 2, what="2 workers")
    assert run_script("emitter_of_tasks.py", "--url", node.url, "--queue", queue, "--file",
                      str(first), log_dir=logs).returncode == 0
    wait_for(lambda: len(done_rows(*outs)) >= 30, what="work under way")
    emitter_out = tmp_path / "e.out"
    set_alarm(node, kind)
    try:
        time.sleep(1)  # what was confirmed before the alarm is acked by now
        ready_at_alarm = queue_state(queue, node.url)[0]
        done_at_alarm = len(done_rows(*outs))
        emitter = start_script("emitter_of_tasks.py", "--url", node.url, "--queue", queue,
                               "--file", str(later), log_dir=logs, out=emitter_out)
        time.sleep(4)
        assert queue_state(queue, node.url)[0] >= ready_at_alarm - 2, (
            "no worker takes more than its slot while it cannot record")
        assert len(done_rows(*outs)) <= done_at_alarm + 2, "nothing acked without its record"
        status = run_script("task_report.py", "--url", node.url, "--queue", queue, "--status",
                            log_dir=logs, timeout=30)
        assert status.returncode == 0 and queue in status.stdout, status.stderr
        during = run_script("task_report.py", "--url", node.url, "--queue", queue,
                            "--reports-dir", str(tmp_path / "r"), log_dir=logs, timeout=30)
        assert during.returncode == 0, during.stdout + during.stderr  # reading only
        assert emitter.poll() is None, "the emitter waits while publishing is blocked"
        assert "blocking publishers" in emitter_out.read_text()
        assert all(w.poll() is None for w in workers), "the workers wait, they do not exit"
    finally:
        clear_alarm(node, kind)
    assert emitter.wait(timeout=60) == 0, emitter_out.read_text()
    assert "20 confirmed" in emitter_out.read_text()
    assert stop_when(all_settled(outs, 320, queue, node.url), queue, workers, log_dir=logs,
                     url=node.url, what="the 320 tasks done") == [0, 0]
    done = done_rows(*outs)
    assert {row for _, row in done} >= set(range(1, 301)), "every task of the first run done"
    assert sum(done.values()) >= 320, "and the 20 published during the alarm"
    assert queue_state(queue, node.url) == (0, 0)
    assert consume_all(queue + ".dead", node.url) == []
    for out in outs:
        text = out.read_text()
        assert text.count("the broker blocks publishing") <= 1, "the alarm said once"
    said = "".join(out.read_text() for out in outs)
    assert "the broker blocks publishing" in said and "the alarm is over" in said
    report = run_script("task_report.py", "--url", node.url, "--queue", queue, "--reports-dir",
                        str(tmp_path / "r"), "--csv", str(tmp_path / "all.csv"), log_dir=logs)
    assert report.returncode == 0, report.stderr
    assert "incomplete" not in report.stdout, "every outcome recorded"
    assert "results: 20 tasks written" in report.stdout, "the latest run: the 20 of the alarm"


# --- faults meeting an alarm (issue 16) -------------------------------------------------------

def emit_slow_task(node, queue: str, logs, tmp_path) -> None:
    """One task of four dots: with --task-timeout 0.3 (1 s a dot) it fails every attempt."""
    rows = write_csv(tmp_path / "rows.csv", ["slow...."])
    assert run_script("emitter_of_tasks.py", "--url", node.url, "--queue", queue, "--file",
                      str(rows), log_dir=logs).returncode == 0


def exit_code_within(process, seconds: float, out, what: str) -> int:
    """The process's exit code, if it ends within *seconds*; else kill it and fail."""
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"{what}: {out.read_text()}") from None

def test_an_idle_worker_stops_within_its_grace_during_an_alarm(alarm_node, logs, tmp_path):
    """Its publishing connection is blocked: closing it cleanly would wait for the alarm."""
    node, queue, out = alarm_node, "alarm_stop_worker_q", tmp_path / "w.out"
    worker = start_worker("--url", node.url, "--queue", queue, "--name", "w1", log_dir=logs,
                          out=out)
    wait_for(lambda: consumers(queue, node.url) == 1, what="the worker")
    set_alarm(node, "memory")
    try:
        time.sleep(1.5)  # a live snapshot went out and is held by the blocked connection
        worker.send_signal(signal.SIGTERM)
        code = exit_code_within(worker, 20, out, "the worker did not stop during the alarm")
    finally:
        clear_alarm(node, "memory")
    assert code == 0, out.read_text()
    assert "worker w1:" in out.read_text(), "the summary is printed"


def test_the_emitters_second_ctrl_c_stops_it_during_an_alarm(alarm_node, logs, tmp_path):
    node, queue, out = alarm_node, "alarm_stop_emitter_q", tmp_path / "e.out"
    rows = write_csv(tmp_path / "rows.csv", [f"row {n}" for n in range(50)])
    set_alarm(node, "disk")
    try:
        emitter = start_script("emitter_of_tasks.py", "--url", node.url, "--queue", queue,
                               "--file", str(rows), log_dir=logs, out=out)
        wait_for(lambda: "blocking publishers" in out.read_text(), what="the emitter blocked")
        emitter.send_signal(signal.SIGINT)
        time.sleep(0.5)
        emitter.send_signal(signal.SIGINT)
        code = exit_code_within(emitter, 15, out,
                                "a second Ctrl+C did not stop the emitter during the alarm")
    finally:
        clear_alarm(node, "disk")
    text = out.read_text()
    assert code == 0 and "stopped on request" in text and "--resume" in text, text
    assert "second stop request" in text and "published again" not in text, text
    assert "every row up to 0 is confirmed" in text, "the resume point stays before them"


def test_exit_when_idle_waits_for_a_retry_copy_an_alarm_holds(alarm_node, logs, tmp_path):
    """The failed task's copy to .retry waits for the alarm; the worker must not call itself
    idle and leave the task to a queue nobody consumes."""
    node, queue, out = alarm_node, "alarm_idle_retry_q", tmp_path / "w.out"
    emit_slow_task(node, queue, logs, tmp_path)
    set_alarm(node, "disk")
    try:
        worker = start_worker("--url", node.url, "--queue", queue, "--name", "w1",
                              "--seconds-per-dot", "1", "--task-timeout", "0.3",
                              "--max-retries", "1", "--retry-delay", "3",
                              "--exit-when-idle", "1", log_dir=logs, out=out)
        wait_for(lambda: "timed out after 0.3 s" in out.read_text(), what="a failed attempt")
        time.sleep(5)  # longer than the retry delay: the delay runs from the broker's confirm
        assert worker.poll() is None, ("idle while its retry copy waits: " + out.read_text())
    finally:
        clear_alarm(node, "disk")
    assert worker.wait(timeout=60) == 0, out.read_text()
    dead = consume_all(queue + ".dead", node.url)
    assert [body for _, body in dead] == [b"slow...."], out.read_text()
    assert "failed 2 times" in dead[0][0].headers["x-death-reason"]
    assert queue_state(queue, node.url) == (0, 0)
    assert consume_all(queue + ".retry", node.url) == []


def test_a_stop_during_an_alarm_puts_back_a_task_whose_copy_waits(alarm_node, logs, tmp_path):
    """The failed task's copy to .retry cannot be published: the stop does not wait for the
    alarm to end; the original goes back to the queue instead (nothing lost)."""
    node, queue, out = alarm_node, "alarm_stop_copy_q", tmp_path / "w.out"
    emit_slow_task(node, queue, logs, tmp_path)
    set_alarm(node, "disk")
    try:
        worker = start_worker("--url", node.url, "--queue", queue, "--name", "w1",
                              "--seconds-per-dot", "1", "--task-timeout", "0.3",
                              log_dir=logs, out=out)
        wait_for(lambda: "timed out after 0.3 s" in out.read_text(), what="a failed attempt")
        worker.send_signal(signal.SIGTERM)
        code = exit_code_within(worker, 30, out, "the stop waited for the alarm")
        assert code == 0, out.read_text()
        assert "the task goes back to the queue instead" in out.read_text()
        assert queue_state(queue, node.url) == (1, 0), "the task is back in the queue"
    finally:
        clear_alarm(node, "disk")


def test_a_connection_lost_while_blocked_does_not_leave_the_worker_blocked(alarm_node, logs,
                                                                          tmp_path):
    """Found by `make chaos` (seed 4): the publishing connection was blocked by an alarm, then
    lost (a node restart); the block was remembered across the reconnect, so no copy or event
    was ever published again and the worker, holding its failed tasks, never got idle."""
    node, queue, out = alarm_node, "alarm_lost_while_blocked_q", tmp_path / "w.out"
    worker = start_worker("--url", node.url, "--queue", queue, "--name", "w1",
                          "--seconds-per-dot", "1", "--task-timeout", "0.3", "--max-retries",
                          "1", "--retry-delay", "0.2", log_dir=logs, out=out)
    wait_for(lambda: consumers(queue, node.url) == 1, what="the worker")
    set_alarm(node, "memory")
    try:
        wait_for(lambda: "the broker blocks publishing" in out.read_text(), timeout=30,
                 what="the publishing connection blocked (its snapshot)")
        assert close_connections_of(node, worker.pid) == 2
        wait_for(lambda: out.read_text().count("connected again") == 2, what="reconnected")
    finally:
        clear_alarm(node, "memory")
    emit_slow_task(node, queue, logs, tmp_path)
    wait_for(lambda: (queue_state(queue + ".dead", node.url) or (0, 0))[0] == 1, timeout=30,
             what="the failed task's copies published (retry, then dead)")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, out.read_text()
    dead = consume_all(queue + ".dead", node.url)
    assert [body for _, body in dead] == [b"slow...."], out.read_text()
