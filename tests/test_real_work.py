"""Real work without fear: handlers that hang or kill their process, programs as work,
several tasks at once, results out. Against the real broker."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import threading
import time

import pytest

from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.results.history import History
from taskqueue.views.report import RunReport
from tests.helpers import (
    MAIN_URL,
    consume_all,
    consumers,
    done_rows,
    gate_files,
    queue_state,
    run_script,
    start_worker,
    unacked,
    wait_for,
)
from tests.stopping import all_settled, stop_when


def emit(queue: str, logs, *texts: str) -> None:
    result = run_script("emitter_of_tasks.py", "--queue", queue,
                        *[arg for text in texts for arg in ("--message", text)], log_dir=logs)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.windows
def test_a_hung_handler_is_stopped_retried_then_dead_lettered(queue, logs, tmp_path):
    out = tmp_path / "w.out"
    emit(queue, logs, "one", "hang here", "two", "three")
    worker = start_worker("--queue", queue, "--handler", "tests.handlers:sleep_forever",
                          "--task-timeout", "2", "--max-retries", "1", "--retry-delay", "0.5",
                          "--exit-when-idle", "2", log_dir=logs, out=out)
    assert worker.wait(timeout=90) == 0, out.read_text()
    text = out.read_text()
    assert "timed out after 2 s" in text
    assert sorted(row for _, row in done_rows(out)) == [1, 3, 4], "the others are done"
    dead = consume_all(queue + ".dead")
    assert [body for _, body in dead] == [b"hang here"]
    assert "failed 2 times; last: timed out after 2 s" in dead[0][0].headers["x-death-reason"]
    assert queue_state(queue) == (0, 0)


@pytest.mark.windows
def test_simulated_work_is_stopped_by_the_timeout_too(queue, logs, tmp_path):
    out = tmp_path / "w.out"
    emit(queue, logs, "a very long one...........", "quick.")
    worker = start_worker("--queue", queue, "--seconds-per-dot", "1", "--task-timeout", "1.5",
                          "--max-retries", "0", "--exit-when-idle", "1.5", log_dir=logs, out=out)
    assert worker.wait(timeout=60) == 0, out.read_text()
    # Its slot's work time, as the worker counts it (not the test's clock, which a slow start
    # under Wine or a loaded machine stretches): the long task's 11 s were cut short.
    busy = re.search(r"busy ([\d.]+) s", out.read_text())
    assert busy and float(busy[1]) < 11, "the 11 s task did not run to its end"
    assert sorted(row for _, row in done_rows(out)) == [2]
    dead = consume_all(queue + ".dead")
    assert "timed out after 1.5 s" in dead[0][0].headers["x-death-reason"]


@pytest.mark.skipif(sys.platform == "win32",
                    reason="its handler SIGKILLs its own process (a POSIX signal)")
def test_a_handler_that_kills_its_process_costs_one_task_not_the_workers(queue, logs, tmp_path):
    emit(queue, logs, *[f"good {n}" for n in range(4)], "poison pill",
         *[f"good {n}" for n in range(4, 8)])
    outs = [tmp_path / f"w{n}.out" for n in range(2)]
    workers = [start_worker("--queue", queue, "--name", f"w{n}", "--handler",
                            "tests.handlers:kill_self_on_poison", "--max-retries", "2",
                            "--retry-delay", "0.3", "--exit-when-idle", "2.5", log_dir=logs,
                            out=out) for n, out in enumerate(outs)]
    assert [w.wait(timeout=90) for w in workers] == [0, 0], "both workers end alive"
    rows = [row for _, row in done_rows(*outs)]
    assert sorted(rows) == [1, 2, 3, 4, 6, 7, 8, 9], "every good task done once"
    dead = consume_all(queue + ".dead")
    assert [body for _, body in dead] == [b"poison pill"]
    assert "handler process died: killed by SIGKILL" in dead[0][0].headers["x-death-reason"]
    assert queue_state(queue) == (0, 0)


@pytest.mark.windows
def test_command_tasks_done_failed_and_never_through_a_shell(queue, logs, tmp_path):
    program = tmp_path / "work.py"
    program.write_text(
        "import sys\n"
        "text = sys.argv[2]\n"
        "if 'fail' in text:\n"
        "    print('something broke', file=sys.stderr)\n"
        "    sys.exit(3)\n"
        "print(f'{sys.argv[1]} [{text}] {len(sys.argv)}')\n")
    out = tmp_path / "w.out"
    emit(queue, logs, "plain", "x; rm -rf ~ && echo $HOME `id` | cat", "please fail")
    worker = start_worker("--queue", queue, "--command", f"{sys.executable} {program} tag {{}}",
                          "--max-retries", "0", "--exit-when-idle", "1.5", log_dir=logs, out=out)
    assert worker.wait(timeout=60) == 0, out.read_text()
    text = out.read_text()
    assert "-> 'tag [plain] 3'" in text
    assert "-> 'tag [x; rm -rf ~ && echo $HOME `id` | cat] 3'" in text, "one argument, as is"
    dead = consume_all(queue + ".dead")
    assert [body for _, body in dead] == [b"please fail"]
    assert "exit code 3: something broke" in dead[0][0].headers["x-death-reason"]


@pytest.mark.windows
def test_a_command_that_outlives_the_timeout_is_killed_with_its_children(queue, logs, tmp_path):
    marker = tmp_path / "child-still-alive"
    grandchild = tmp_path / "grandchild.py"
    grandchild.write_text(f"import time\ntime.sleep(3)\nopen({str(marker)!r}, 'w').close()\n")
    program = tmp_path / "spawner.py"
    program.write_text("import subprocess, sys, time\n"
                       f"subprocess.Popen([sys.executable, {str(grandchild)!r}])\n"
                       "time.sleep(60)\n")
    out = tmp_path / "w.out"
    emit(queue, logs, "spawn")
    worker = start_worker("--queue", queue, "--command", f"{sys.executable} {program}",
                          "--task-timeout", "1", "--max-retries", "0", "--exit-when-idle", "1",
                          log_dir=logs, out=out)
    assert worker.wait(timeout=60) == 0, out.read_text()
    time.sleep(3)
    assert not marker.exists(), "the program's own child was killed too"
    assert "timed out after 1 s" in consume_all(queue + ".dead")[0][0].headers["x-death-reason"]


def test_four_slots_do_forty_tasks_at_once(queue, logs, tmp_path):
    out = tmp_path / "w.out"
    runs, gate = gate_files(tmp_path)
    # A classic queue: rabbitmqctl reads its unacked count live (a quorum queue's is a
    # statistic refreshed every few seconds).
    worker = start_worker("--queue", queue, "--queue-type", "classic", "--name", "quad",
                          "--concurrency", "4", "--handler", "tests.handlers:gated",
                          log_dir=logs, out=out)  # no idle exit: it is there before the tasks
    wait_for(lambda: consumers(queue) == 1, what="worker")
    samples: list[int] = []
    stop = threading.Event()

    def watch_unacked() -> None:
        while not stop.is_set():
            samples.append(unacked(queue))

    watcher = threading.Thread(target=watch_unacked)
    watcher.start()
    emit(queue, logs, *[f"task {n}" for n in range(40)])
    try:
        # At once, by what happened, not by how long the run took (a loaded machine stretches
        # that): each task works until the gate opens, so four started with it still shut
        # were at work together; none could end to make room for another.
        wait_for(lambda: runs.exists() and len(runs.read_text().splitlines()) >= 4,
                 what="four tasks at work together")
        assert len(runs.read_text().splitlines()) == 4, "no more than the 4 slots at once"
        wait_for(lambda: 4 in samples, what="the broker sees the 4 unacked (slots in use)")
        gate.touch()
        assert stop_when(all_settled([out], 40, queue), queue, [worker], log_dir=logs,
                         what="the 40 tasks done") == [0], out.read_text()
    finally:
        stop.set()
        watcher.join()
    assert sorted(row for _, row in done_rows(out)) == list(range(1, 41))
    assert max(samples) <= 4, samples
    history = History(BrokerSettings([MAIN_URL]), QueueSpec(queue), tmp_path / "reports")
    run = history.latest_run() or ""
    report = RunReport(history.run_records(run)(), run, queue)
    assert {s.worker for s in report.slots} == {"quad/1", "quad/2", "quad/3", "quad/4"}
    assert [(w.worker, w.slots) for w in report.workers] == [("quad", 4)]


@pytest.mark.windows
def test_results_come_out_as_csv(queue, logs, tmp_path):
    out = tmp_path / "w.out"
    emit(queue, logs, "first, with a comma", "second \"quoted\"", "third")  # before: no race
    worker = start_worker("--queue", queue, "--handler", "tests.handlers:shout",
                          "--exit-when-idle", "1.5", log_dir=logs, out=out)
    assert worker.wait(timeout=60) == 0, out.read_text()
    results = tmp_path / "results.csv"
    report = run_script("task_report.py", "--queue", queue, "--reports-dir",
                        str(tmp_path / "r"), "--csv", str(results), log_dir=logs)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "FIRST, WITH A COMMA" in report.stdout, "the report shows results"
    with open(results, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["row"] for row in rows] == ["1", "2", "3"]
    assert [row["result_or_error"] for row in rows] == ["FIRST, WITH A COMMA",
                                                         'SECOND "QUOTED"', "THIRD"]
    assert all(row["outcome"] == "done" and row["attempts"] == "1" for row in rows)
    assert list(rows[0]) == ["row", "task", "worker", "host", "started", "seconds", "attempts",
                             "outcome", "result_or_error", "message_id", "run_id"]


@pytest.mark.windows
@pytest.mark.parametrize(("args", "phrase"), [
    (["--task-timeout", "0"], "must be more than 0"),
    (["--task-timeout", "soon"], "not a number"),
    (["--concurrency", "0"], "must be at least 1"),
    (["--handler", "no_such_module:work"], "cannot load --handler 'no_such_module:work'"),
    (["--handler", "tests.handlers_broken:work"], "RuntimeError: this module is broken"),
    (["--handler", "tests.handlers:nothing_here"], "cannot load --handler"),
    (["--command", "no-such-program-here {}"], "program 'no-such-program-here' not found"),
    (["--handler", "tests.handlers:shout", "--command", "echo"], "not both"),
    (["--handler", "tests.handlers:shout", "--in-process", "--task-timeout", "1"],
     "cannot stop an --in-process handler"),
])
def test_bad_work_options_are_one_line_and_nothing_is_consumed(args, phrase, queue, logs):
    emit(queue, logs, "waiting task")
    result = run_script("listening_worker.py", "--queue", queue, *args, log_dir=logs, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and phrase in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert queue_state(queue) == (1, 0), "nothing consumed"


def test_ctrl_c_finishes_every_slots_task(queue, logs, tmp_path):
    out = tmp_path / "w.out"
    worker = start_worker("--queue", queue, "--concurrency", "3", "--seconds-per-dot", "0.5",
                          log_dir=logs, out=out)
    wait_for(lambda: consumers(queue) == 1, what="worker")
    emit(queue, logs, "a...", "b...", "c...", "d.")
    wait_for(lambda: out.read_text().count("received") == 3, what="three tasks in hand")
    worker.send_signal(subprocess.signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert sorted(row for _, row in done_rows(out)) == [1, 2, 3]
    assert queue_state(queue) == (1, 0) and unacked(queue) == 0


def test_ctrl_c_in_a_terminal_reaches_the_children_too_yet_their_tasks_finish(queue, logs,
                                                                               tmp_path):
    """A terminal's Ctrl+C is sent to the whole process group: the handler's child process and
    a command's program must not die of it; the worker finishes the tasks in hand."""
    import os
    import signal

    from tests.helpers import ROOT, script_env

    program = tmp_path / "second.py"
    program.write_text("import time\ntime.sleep(1)\nprint('slept')\n")
    runs = [["--handler", "tests.handlers:one_second", "--concurrency", "2"],
            ["--command", f"{sys.executable} {program}", "--concurrency", "2"]]
    for number, work in enumerate(runs):
        out = tmp_path / f"w{number}.out"
        with open(out, "w") as handle:
            worker = subprocess.Popen([sys.executable, str(ROOT / "listening_worker.py"),
                                       "--queue", queue, *work], stdout=handle,
                                      stderr=subprocess.STDOUT, env=script_env(logs), cwd=ROOT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for(lambda: consumers(queue) == 1, what="worker")
            emit(queue, logs, "a", "b", "c")
            wait_for(lambda out=out: out.read_text().count("received") == 2,
                     what="two tasks in hand")
            os.killpg(worker.pid, signal.SIGINT)  # what Ctrl+C in its terminal does
            assert worker.wait(timeout=30) == 0, out.read_text()
        finally:
            if worker.poll() is None:
                worker.kill()
        text = out.read_text()
        assert sorted(row for _, row in done_rows(out)) == [1, 2], text
        assert "] failed " not in text and "died" not in text, text
        assert queue_state(queue) == (1, 0)
        consume_all(queue)
