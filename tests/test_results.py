"""The results record (issue 22): every outcome recorded before the ack, readable from anywhere
any number of times, one row per task, and a task already done is not run again."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pika
import pytest

from taskqueue.broker.config import BrokerSettings, QueueSpec
from tests.helpers import (
    MAIN_URL,
    consumers,
    gate_files,
    queue_state,
    run_python,
    run_script,
    start_gated,
    start_script,
    start_worker,
    unacked,
    wait_for,
    write_csv,
)
from tests.proxy import HoldingProxy
from tests.stopping import all_settled, stop_when, stop_workers


def records(queue: str) -> list[dict]:
    from taskqueue.results.reader import RecordReader  # here: the file runs on older code too

    reader = RecordReader(BrokerSettings([MAIN_URL]), QueueSpec(queue), idle=1.0)
    return [r for r in reader.records() if (r.get("kind") or "task") == "task"]


def read_csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def emit(queue: str, logs: Path, path: Path, *extra: str) -> str:
    result = run_script("emitter_of_tasks.py", "--queue", queue, "--file", str(path), *extra,
                        log_dir=logs)
    assert result.returncode == 0, result.stdout + result.stderr
    return re.search(r"\(run (\S+)\)", result.stdout)[1]


def report_csv(queue: str, logs: Path, directory: Path, run: str | None = None) -> list[dict]:
    out = directory / "results.csv"
    args = ["--run", run] if run else []
    result = run_script("task_report.py", "--queue", queue, "--reports-dir", str(directory),
                        "--csv", str(out), *args, log_dir=logs)
    assert result.returncode == 0, result.stdout + result.stderr
    return read_csv(out)


def counted_worker(queue: str, name: str, logs: Path, tmp_path: Path, *extra: str,
                   runs: Path | None = None) -> subprocess.Popen:
    env_runs = runs or tmp_path / "runs.txt"
    os.environ["RUNS_FILE"] = str(env_runs)  # inherited by the worker through script_env
    return start_worker("--queue", queue, "--name", name, "--handler", "tests.handlers:counted",
                        *extra, log_dir=logs, out=tmp_path / f"{name}.out")


def runs_of(path: Path) -> Counter:
    if not path.exists():
        return Counter()
    return Counter(line.split(" ", 1)[1].rstrip("\n") for line in path.read_text().splitlines())


# --- the record --------------------------------------------------------------------------------
def test_workers_killed_mid_run_lose_no_result(queue, logs, tmp_path):
    """SIGKILL workers again and again while they work, no report running: afterwards the CSV
    has every task once, with its result (before: outcomes rode events sent after the ack)."""
    rows = [f"job {n}" for n in range(1, 301)]
    run = emit(queue, logs, write_csv(tmp_path / "jobs.csv", rows))
    names = ["a", "b", "c"]
    # Each kill returns a worker's tasks to the queue's head with one more delivery counted
    # by the broker. A kill every 0.4 s outpaces starting workers on a loaded machine: a pair
    # of tasks then bounces through workers that die before they run it (CI saw one reach
    # the default --delivery-limit 5 and be dead-lettered, as that policy says, and recorded
    # as dead). That policy is not what this test is about: the limit is out of its reach.
    options = ("--concurrency", "2", "--delivery-limit", "1000")
    workers = {name: counted_worker(queue, name, logs, tmp_path, *options) for name in names}
    kills = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (queue_state(queue) or (0, 0))[0] > 30:
        time.sleep(0.4)
        name = names[kills % 3]
        workers[name].send_signal(signal.SIGKILL)
        workers[name].wait(timeout=10)
        kills += 1
        workers[name] = counted_worker(queue, f"{name}{kills}", logs, tmp_path, *options)
    assert kills >= 5, "the run was long enough to kill workers during it"
    for process in workers.values():
        process.send_signal(signal.SIGTERM)
    for process in workers.values():  # gone first: every task they held is back in the queue,
        process.wait(timeout=30)      # so the last worker's idle exit races no return
    # (The last worker too: a task the kills returned 5 times reaches it with that count.)
    final = counted_worker(queue, "last", logs, tmp_path, *options, "--exit-when-idle", "2")
    assert final.wait(timeout=120) == 0
    assert queue_state(queue) == (0, 0), "the queue drained"
    wait_for(lambda: unacked(queue) == 0, timeout=30, what="no unacked task (a quorum "
             "queue's figure is a few seconds old)")
    table = report_csv(queue, logs, tmp_path / "r", run)
    assert sorted(int(row["row"]) for row in table) == list(range(1, 301)), "one row per task"
    assert {row["outcome"] for row in table} == {"done"}
    assert all(row["result_or_error"] == f"result of {row['task']}" for row in table)
    ran = runs_of(tmp_path / "runs.txt")
    assert set(ran) == set(rows), "every task ran"


@pytest.mark.parametrize("point", ["running", "recorded", "confirmed"],
                         ids=["running", "recorded-not-confirmed", "confirmed-not-acked"])
def test_a_worker_killed_at_each_point_of_a_delivery(point, queue, logs, tmp_path):
    """SIGKILL at each point of a delivery's life (worker/life.py: run -> record -> confirm ->
    ack), made to happen exactly there: the handler works until the test opens its gate, and
    a proxy holds the broker's confirms (publishing connection) or the worker's ack (consuming
    connection). Another worker then finishes: one row, done, with its result; a task whose
    record was written is not run again; one killed while running runs again (the listed
    cause of a duplicate: a task cut off mid-work)."""
    run = emit(queue, logs, write_csv(tmp_path / "t.csv", ["the task"]))
    runs, gate = gate_files(tmp_path)
    proxy = HoldingProxy(urlsplit(MAIN_URL).port)
    first_out = tmp_path / "first.out"
    try:
        first = start_gated(queue, "first", log_dir=logs, out=first_out, port=proxy.port)
        wait_for(lambda: runs_of(runs), timeout=60, what="the task to start")
        if point == "recorded":
            proxy.hold(HoldingProxy.named("listening_worker first (publishing)"), "client")
        if point == "confirmed":
            proxy.hold(HoldingProxy.named("listening_worker first"), "broker")
        if point != "running":
            gate.touch()
            wait_for(lambda: [r for r in records(queue) if r["outcome"] == "done"], timeout=60,
                     what="the done record in the stream")
        if point == "confirmed":  # logged once the ack is sent (and held by the proxy)
            wait_for(lambda: "] done row 1" in first_out.read_text(), what="the ack sent")
        else:
            assert "] done row 1" not in first_out.read_text(), "no ack before the confirm"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        proxy.close()
    gate.touch()
    second = start_gated(queue, "second", "--exit-when-idle", "1.5", log_dir=logs,
                         out=tmp_path / "second.out")
    assert second.wait(timeout=60) == 0
    assert queue_state(queue) == (0, 0), "the queue drained"
    table = report_csv(queue, logs, tmp_path / "r", run)
    assert [(row["outcome"], row["result_or_error"]) for row in table] == [
        ("done", "result of the task")]
    said = (tmp_path / "second.out").read_text()
    if point == "running":
        assert runs_of(runs)["the task"] == 2 and table[0]["worker"] == "second"
    else:
        assert runs_of(runs)["the task"] == 1, said
        assert "already done by first at" in said and table[0]["worker"] == "first"


def test_the_report_from_two_directories_sees_the_same_results(queue, logs, tmp_path):
    """Reading the record takes nothing away (before: the first report moved the events)."""
    run = emit(queue, logs, write_csv(tmp_path / "t.csv", [f"t{n}" for n in range(20)]))
    worker = counted_worker(queue, "w", logs, tmp_path, "--exit-when-idle", "1.5")
    assert worker.wait(timeout=60) == 0
    first = report_csv(queue, logs, tmp_path / "one")
    second = report_csv(queue, logs, tmp_path / "two")
    again = report_csv(queue, logs, tmp_path / "one", run)
    assert len(first) == len(second) == len(again) == 20
    assert first == second == again


def test_a_result_over_the_size_limit_is_cut_and_says_so(queue, logs, tmp_path):
    emit(queue, logs, write_csv(tmp_path / "t.csv", ["big"]))
    worker = start_worker("--queue", queue, "--handler", "tests.handlers:big_result",
                          "--exit-when-idle", "1.5", log_dir=logs, out=tmp_path / "w.out")
    assert worker.wait(timeout=60) == 0
    [record] = records(queue)
    assert record["cut"] is True and record["outcome"] == "done"
    assert 16 * 1024 <= len(record["result"].encode()) <= 16 * 1024 + 4


def test_the_results_stream_deleted_under_a_worker_is_made_again(queue, logs, tmp_path):
    first = emit(queue, logs, write_csv(tmp_path / "a.csv", [f"a{n}" for n in range(10)]))
    out = tmp_path / "w.out"
    worker = start_worker("--queue", queue, "--name", "w", "--handler", "tests.handlers:shout",
                          log_dir=logs, out=out)  # no idle exit: the second run comes later
    wait_for(lambda: len(records(queue)) == 10, timeout=60, what="the first run recorded")
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    connection.channel().queue_delete(f"{queue}.results")
    connection.close()
    second = emit(queue, logs, write_csv(tmp_path / "b.csv", [f"b{n}" for n in range(10)]))
    assert stop_when(all_settled([out], 10 + 10, queue), queue, [worker], log_dir=logs,
                     what="the second run done") == [0], out.read_text()[-2000:]
    assert queue_state(queue) == (0, 0), "every task acked"
    kept = records(queue)
    assert sorted(r["task"] for r in kept) == sorted(f"b{n}" for n in range(10))
    assert {r["run_id"] for r in kept} == {second} and first != second


# --- not run again once done ---------------------------------------------------------------------
def publish_copies(queue: str, tasks: list[dict]) -> None:
    """Publish again, by hand, messages with the ids of recorded tasks."""
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    channel = connection.channel()
    channel.confirm_delivery()  # an unconfirmed message may never reach a quorum queue
    for task in tasks:
        channel.basic_publish("", queue, task["task"].encode(), pika.BasicProperties(
            message_id=task["message_id"], correlation_id=task["run_id"], delivery_mode=2))
    connection.close()


def test_a_task_published_again_is_not_run_again(queue, logs, tmp_path):
    emit(queue, logs, write_csv(tmp_path / "t.csv", ["one", "two", "three"]))
    runs = tmp_path / "runs.txt"
    worker = counted_worker(queue, "w", logs, tmp_path, "--exit-when-idle", "1.5", runs=runs)
    assert worker.wait(timeout=60) == 0
    publish_copies(queue, records(queue))
    again = counted_worker(queue, "v", logs, tmp_path, "--exit-when-idle", "1.5", runs=runs)
    assert again.wait(timeout=60) == 0
    assert runs_of(runs) == Counter(["one", "two", "three"]), "each ran once"
    text = (tmp_path / "v.out").read_text()
    assert text.count("already done by w at") == 3, text
    assert "3 skipped (already done)" in text
    assert queue_state(queue) == (0, 0)


def test_a_redelivered_task_already_done_is_acked_unrun(queue, logs, tmp_path):
    """A copy redelivered (its first consumer went away without an ack) after the task's done
    record: the worker waits for its fence, sees the record, and does not run it."""
    emit(queue, logs, write_csv(tmp_path / "t.csv", ["alpha"]))
    runs = tmp_path / "runs.txt"
    assert counted_worker(queue, "w", logs, tmp_path, "--exit-when-idle", "1.5",
                          runs=runs).wait(timeout=60) == 0
    publish_copies(queue, records(queue))
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    channel = connection.channel()
    method, _properties, _body = next(channel.consume(queue, inactivity_timeout=10))
    assert method is not None and not method.redelivered
    connection.close()  # no ack: the broker delivers it again, flagged redelivered
    out = tmp_path / "v.out"
    again = counted_worker(queue, "v", logs, tmp_path, "--exit-when-idle", "1.5", runs=runs)
    assert again.wait(timeout=60) == 0
    assert runs_of(runs) == Counter(["alpha"]), out.read_text()
    assert "already done by w at" in out.read_text()


def test_a_new_run_and_a_message_without_id_run_again(queue, logs, tmp_path):
    path = write_csv(tmp_path / "t.csv", ["same"])
    emit(queue, logs, path)
    emit(queue, logs, path)  # a new run of the same file: the user asked for it again
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    channel = connection.channel()
    channel.confirm_delivery()
    for _ in range(2):  # another producer's messages: no message_id
        channel.basic_publish("", queue, b"anon", pika.BasicProperties(delivery_mode=2))
    connection.close()
    runs = tmp_path / "runs.txt"
    worker = counted_worker(queue, "w", logs, tmp_path, "--exit-when-idle", "1.5", runs=runs)
    assert worker.wait(timeout=60) == 0
    assert runs_of(runs) == Counter({"same": 2, "anon": 2})


# --- the emitter: --skip-done, --wait ------------------------------------------------------
def test_skip_done_publishes_only_what_is_left(queue, logs, tmp_path):
    path = write_csv(tmp_path / "t.csv", [f"row {n}" for n in range(1, 7)])
    emit(queue, logs, path)
    assert counted_worker(queue, "w", logs, tmp_path, "--exit-when-idle",
                          "1.5").wait(timeout=60) == 0
    path.write_text(path.read_text() + "row 7\nrow 8\n", encoding="utf-8")
    result = run_script("emitter_of_tasks.py", "--queue", queue, "--file", str(path),
                        "--skip-done", log_dir=logs)
    assert result.returncode == 0, result.stderr
    assert "skipped 6 rows done before (--skip-done)" in result.stdout
    assert "2 rows read, 2 confirmed" in result.stdout
    assert queue_state(queue)[0] == 2


def test_wait_writes_one_row_per_task_and_exits_6_when_some_died(queue, logs, tmp_path):
    worker = start_worker("--queue", queue, "--handler", "tests.handlers:fail_on_boom",
                          "--max-retries", "1", "--retry-delay", "0.2", log_dir=logs,
                          out=tmp_path / "w.out")
    wait_for(lambda: consumers(queue) == 1, what="the worker")
    path = write_csv(tmp_path / "t.csv", ["fine", "boom", "also fine"])
    out = tmp_path / "results.csv"
    result = run_script("emitter_of_tasks.py", "--queue", queue, "--file", str(path), "--wait",
                        "--results", str(out), log_dir=logs)
    assert result.returncode == 6, result.stdout + result.stderr
    table = {row["task"]: row for row in read_csv(out)}
    assert set(table) == {"fine", "boom", "also fine"}
    assert table["boom"]["outcome"] == "dead" and table["boom"]["attempts"] == "2"
    assert "cannot handle 'boom'" in table["boom"]["result_or_error"]
    assert table["fine"]["outcome"] == "done"
    path2 = write_csv(tmp_path / "u.csv", ["ok 1", "ok 2"])
    result = run_script("emitter_of_tasks.py", "--queue", queue, "--file", str(path2), "--wait",
                        log_dir=logs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all outcomes in: 2 of 2 tasks" in result.stdout
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0


def test_ctrl_c_while_waiting_leaves_the_tasks_and_says_how_to_collect(queue, logs, tmp_path):
    path = write_csv(tmp_path / "t.csv", ["a", "b"])
    out = tmp_path / "e.out"
    emitter = start_script("emitter_of_tasks.py", "--queue", queue, "--file", str(path),
                           "--wait", log_dir=logs, out=out)
    wait_for(lambda: "waiting for the outcomes of 2 tasks" in out.read_text(), what="waiting")
    emitter.send_signal(signal.SIGINT)
    assert emitter.wait(timeout=30) == 130
    text = out.read_text()
    assert "stopped waiting" in text and "task_report.py --queue" in text, text
    assert "Traceback" not in text
    assert queue_state(queue)[0] == 2, "the tasks stay queued for the workers"


def test_submit_wait_results_from_python(queue, logs, tmp_path):
    worker = start_worker("--queue", queue, "--handler", "tests.handlers:shout",
                          log_dir=logs, out=tmp_path / "w.out")  # no idle exit: stopped below
    code = (f"import taskqueue\n"
            f"run = taskqueue.submit(['x', 'y, z', 'x'], queue={queue!r}, url={MAIN_URL!r})\n"
            f"assert run.wait(timeout=60), run.outcomes\n"
            f"rows = sorted((r['row'], r['task'], r['outcome'], r['result_or_error']) "
            f"for r in run.results())\n"
            f"print(rows)\n")
    result = run_python(code, log_dir=logs, timeout=90)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ("[(1, 'x', 'done', 'X'), (2, 'y, z', 'done', 'Y, Z'), "
                                     "(3, 'x', 'done', 'X')]")
    assert stop_workers(queue, [worker], log_dir=logs) == [0]


def test_resume_goes_on_with_the_interrupted_run_so_done_rows_are_not_run_again(queue, logs,
                                                                                 tmp_path):
    """An emitter killed after its last resume point was saved: --resume publishes the rows
    after that point again. They belong to the same run, so those already done are acked
    unrun (before 0.4 --resume made a new run, and they ran twice)."""
    from taskqueue.emitter.resume import ResumeState

    path = write_csv(tmp_path / "t.csv", [f"job {n}" for n in range(1, 6)])
    run = emit(queue, logs, path)
    runs = tmp_path / "runs.txt"
    assert counted_worker(queue, "w", logs, tmp_path, "--exit-when-idle", "1.5",
                          runs=runs).wait(timeout=60) == 0
    # As a SIGKILL a moment after the point for row 2 was saved would leave it:
    ResumeState(logs, str(path), queue).save(2, complete=False, run_id=run)
    result = run_script("emitter_of_tasks.py", "--queue", queue, "--file", str(path),
                        "--resume", log_dir=logs)
    assert result.returncode == 0, result.stderr
    assert f"(run {run})" in result.stdout and "3 rows read, 3 confirmed" in result.stdout
    again = counted_worker(queue, "v", logs, tmp_path, "--exit-when-idle", "1.5", runs=runs)
    assert again.wait(timeout=60) == 0
    assert runs_of(runs) == Counter(f"job {n}" for n in range(1, 6)), "each ran once"
    assert "3 skipped (already done)" in (tmp_path / "v.out").read_text()
    assert len(report_csv(queue, logs, tmp_path / "r", run)) == 5


def test_the_report_ends_while_workers_keep_writing(queue, logs, tmp_path):
    """A stream never ends, and a busy one never pauses: the report reads up to where the
    stream ended when it began (before: it waited for a quiet second that never came)."""
    import json
    import threading

    run = emit(queue, logs, write_csv(tmp_path / "t.csv", [f"t{n}" for n in range(5)]))
    assert counted_worker(queue, "w", logs, tmp_path, "--exit-when-idle",
                          "1").wait(timeout=60) == 0
    stop = threading.Event()

    def busy_writer() -> None:  # another run's records, ten groups a second
        connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
        channel = connection.channel()
        n = 0
        while not stop.is_set():
            n += 1
            channel.basic_publish("", f"{queue}.results", json.dumps([{
                "kind": "task", "id": f"busy-{n}", "run_id": "other", "outcome": "failed",
                "row": n, "message_id": f"x:{n}:0", "worker": "b", "started": 1.0,
                "finished": 1.0, "seconds": 0.0}]).encode())
            time.sleep(0.1)
        connection.close()

    writer = threading.Thread(target=busy_writer)
    writer.start()
    try:
        time.sleep(1)
        table = report_csv(queue, logs, tmp_path / "r", run)  # run_script: 60 s at most
    finally:
        stop.set()
        writer.join()
    assert sorted(row["task"] for row in table) == [f"t{n}" for n in range(5)]
