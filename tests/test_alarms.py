"""Resource alarms on a throwaway node: while the broker blocks publishers, a worker keeps each
finished task's outcome in its journal on disk (fsynced), acks the task and takes the next, so
the queue drains; the emitter waits; the report keeps working; a stop still stops; after the
alarm every journal is published (one killed meanwhile: by the next worker of its host), and
every task has its one row."""

from __future__ import annotations

import csv
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.brokers import close_connections_of, ctl
from tests.helpers import (
    DONE_LINE,
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


def done_during_alarm(out: Path) -> int:
    """'done' lines a worker wrote after the broker blocked it and before it said the alarm
    was over: tasks it finished and acked while nothing could be published."""
    text = out.read_text()
    begin = text.find("the broker blocks publishing")
    if begin < 0:
        return 0
    end = text.find("the alarm is over", begin)
    return len(DONE_LINE.findall(text[begin:end if end >= 0 else len(text)]))


def emit(node, queue: str, rows: Path, logs: Path) -> str:
    """Publish a file's tasks; the run's id."""
    result = run_script("emitter_of_tasks.py", "--url", node.url, "--queue", queue, "--file",
                        str(rows), log_dir=logs)
    assert result.returncode == 0, result.stdout + result.stderr
    return re.search(r"\(run (\S+)\)", result.stdout)[1]


def journal_files(logs: Path, queue: str) -> list[Path]:
    return sorted((logs / "journal" / queue).glob("*.jsonl"))


def assert_one_row_per_task(node, queue: str, run: str, tasks: int, logs: Path,
                            tmp_path: Path) -> None:
    """task_report.py --csv of *run*: each of its *tasks* rows once, done."""
    out = tmp_path / f"{run}.csv"
    report = run_script("task_report.py", "--url", node.url, "--queue", queue, "--run", run,
                        "--reports-dir", str(tmp_path / "r"), "--csv", str(out), log_dir=logs)
    assert report.returncode == 0, report.stdout + report.stderr
    with open(out, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(int(row["row"]) for row in rows) == list(range(1, tasks + 1)), (
        "one row per task, none lost, none twice")
    assert {row["outcome"] for row in rows} == {"done"}


@pytest.mark.parametrize("kind", ["disk", "memory"])
def test_during_an_alarm_the_work_goes_on_and_every_outcome_is_published_after(
        kind, alarm_node, logs, tmp_path):
    """The broker blocks publishing: the workers keep each outcome in their journal, ack, and
    take the next task, so the queue drains; the emitter waits. Once the alarm is over the
    journals are published: one row per task, as if there had been no alarm."""
    node = alarm_node
    queue = f"alarm_{kind}_q"
    first = write_csv(tmp_path / "first.csv", [f"first {n}." for n in range(300)])
    later = write_csv(tmp_path / "later.csv", [f"later {n}." for n in range(20)])
    outs = [tmp_path / f"w{n}.out" for n in range(2)]
    workers = [start_worker("--url", node.url, "--queue", queue, "--name", f"w{n}",
                            "--seconds-per-dot", "0.05", log_dir=logs, out=out)
               for n, out in enumerate(outs)]  # no idle exit: they run before the publish
    wait_for(lambda: consumers(queue, node.url) == 2, what="2 workers")
    first_run = emit(node, queue, first, logs)
    wait_for(lambda: len(done_rows(*outs)) >= 30, what="work under way")
    emitter_out = tmp_path / "e.out"
    set_alarm(node, kind)
    try:
        wait_for(lambda: all("the broker blocks publishing" in out.read_text() for out in outs),
                 what="both workers blocked")
        emitter = start_script("emitter_of_tasks.py", "--url", node.url, "--queue", queue,
                               "--file", str(later), log_dir=logs, out=emitter_out)
        wait_for(lambda: queue_state(queue, node.url)[0] == 0
                 and len(done_rows(*outs)) >= 300, timeout=120, interval=0.2,
                 what="the queue drained during the alarm")
        during = sum(done_during_alarm(out) for out in outs)
        assert during > 0, "tasks were done and acked while publishing was blocked"
        assert ("disk" if kind == "disk" else "memory") in alarms(node), "still during it"
        assert journal_files(logs, queue), "their outcomes wait in the journal"
        status = run_script("task_report.py", "--url", node.url, "--queue", queue, "--status",
                            log_dir=logs, timeout=30)
        assert status.returncode == 0 and queue in status.stdout, status.stderr
        assert emitter.poll() is None, "the emitter waits while publishing is blocked"
        wait_for(lambda: "blocking publishers" in emitter_out.read_text(),
                 what="the emitter says why it waits")
        assert all(w.poll() is None for w in workers), "the workers wait, they do not exit"
    finally:
        clear_alarm(node, kind)
    assert emitter.wait(timeout=60) == 0, emitter_out.read_text()
    assert "20 confirmed" in emitter_out.read_text()
    assert stop_when(all_settled(outs, 320, queue, node.url), queue, workers, log_dir=logs,
                     url=node.url, what="the 320 tasks done") == [0, 0]
    print(f"{kind} alarm: {during} of 300 tasks done and acked during it")
    assert journal_files(logs, queue) == [], "each journal deleted once published"
    said = "".join(out.read_text() for out in outs)
    assert "the alarm is over" in said and "kept in the journal" in said
    for out in outs:
        assert out.read_text().count("the broker blocks publishing") <= 1, "the alarm said once"
    assert queue_state(queue, node.url) == (0, 0)
    assert consume_all(queue + ".dead", node.url) == []
    assert_one_row_per_task(node, queue, first_run, 300, logs, tmp_path)


def test_a_worker_killed_during_an_alarm_leaves_its_journal_to_the_next_one(alarm_node, logs,
                                                                           tmp_path):
    """kill -9 while outcomes wait in the journal: those tasks were acked, so only the journal
    has them. A worker started later on that host and queue takes the dead one's file over
    and publishes it: one row per task all the same."""
    node, queue = alarm_node, "alarm_kill_q"
    rows = write_csv(tmp_path / "rows.csv", [f"task {n}." for n in range(150)])
    out1, out2 = tmp_path / "w1.out", tmp_path / "w2.out"
    first = start_worker("--url", node.url, "--queue", queue, "--name", "w1",
                         "--seconds-per-dot", "0.05", log_dir=logs, out=out1)
    wait_for(lambda: consumers(queue, node.url) == 1, what="the worker")
    run = emit(node, queue, rows, logs)
    wait_for(lambda: len(done_rows(out1)) >= 10, what="work under way")
    set_alarm(node, "memory")
    try:
        wait_for(lambda: done_during_alarm(out1) >= 20, timeout=60,
                 what="tasks done during the alarm")
        first.kill()  # SIGKILL: nothing is closed, nothing flushed
        first.wait(timeout=10)
        left = journal_files(logs, queue)
        assert left and f".{first.pid}." in left[0].name, "the dead worker's journal stays"
    finally:
        clear_alarm(node, "memory")
    second = start_worker("--url", node.url, "--queue", queue, "--name", "w2",
                          "--seconds-per-dot", "0.05", "--exit-when-idle", "1", log_dir=logs,
                          out=out2)
    assert second.wait(timeout=120) == 0, out2.read_text()
    published = re.search(r"publishing (\d+) outcome\(s\) kept in the journal", out2.read_text())
    assert published, "the orphan was published: " + out2.read_text()
    print(f"kill -9 during an alarm: {done_during_alarm(out1)} tasks acked during it, "
          f"{published[1]} outcomes published from its journal by the next worker")
    assert journal_files(logs, queue) == []
    assert queue_state(queue, node.url) == (0, 0)
    assert_one_row_per_task(node, queue, run, 150, logs, tmp_path)


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
    """The failed task's copy to .retry waits in the journal for the alarm to end; the worker
    must not call itself idle and leave the task in a journal nobody publishes."""
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


def test_a_stop_during_an_alarm_leaves_a_copy_in_the_journal_for_the_next_worker(
        alarm_node, logs, tmp_path):
    """The failed task's copy to .retry cannot be published: it goes to the journal, the
    original is acked, and the stop does not wait for the alarm. The next worker of this host
    publishes the copy: the task is retried, then dead-lettered (nothing lost)."""
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
        assert "stay in the journal" in out.read_text()
        assert queue_state(queue, node.url) == (0, 0), "acked: its copy is in the journal"
        assert journal_files(logs, queue)
    finally:
        clear_alarm(node, "disk")
    out2 = tmp_path / "w2.out"
    second = start_worker("--url", node.url, "--queue", queue, "--name", "w2",
                          "--seconds-per-dot", "1", "--task-timeout", "0.3", "--max-retries",
                          "1", "--retry-delay", "0.2", log_dir=logs, out=out2)
    wait_for(lambda: (queue_state(queue + ".dead", node.url) or (0, 0))[0] == 1, timeout=60,
             what="the copy published from the journal, retried, then dead-lettered")
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0, out2.read_text()
    assert "kept in the journal" in out2.read_text()
    dead = consume_all(queue + ".dead", node.url)
    assert [body for _, body in dead] == [b"slow...."], out2.read_text()
    assert journal_files(logs, queue) == []


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
