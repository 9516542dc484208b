"""The who-did-what report checked against a run with known tasks, on the real broker."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from taskqueue.views.report import RunReport
from taskqueue.views.store import latest_run
from tests.helpers import consumers, run_script, start_worker, wait_for, write_csv
from tests.stopping import all_settled, stop_when

SVG = "{http://www.w3.org/2000/svg}"

pytestmark = pytest.mark.windows  # the Windows tier runs this whole file (scripts/windows.sh)


def test_report_of_12_tasks_by_3_workers(queue, logs, tmp_path):
    spd = 0.05
    rows = [f"task {n}" + "." * (1 + n % 3) for n in range(12)]
    csv = write_csv(tmp_path / "t.csv", rows)
    # No idle exit: the workers are there before the tasks (to share them); they are stopped
    # once every task is settled, so a slow emitter start races no timer.
    workers = [start_worker("--queue", queue, "--name", f"worker-{n}", "--seconds-per-dot",
                            str(spd), log_dir=logs, out=tmp_path / f"w{n}.out")
               for n in range(3)]
    wait_for(lambda: consumers(queue) == 3, what="3 workers")
    assert run_script("emitter_of_tasks.py", "--queue", queue, "--file", str(csv),
                      log_dir=logs).returncode == 0
    assert stop_when(all_settled([tmp_path / f"w{n}.out" for n in range(3)], 12, queue), queue,
                     workers, log_dir=logs, what="the 12 tasks done") == [0, 0, 0]

    reports = tmp_path / "reports"
    result = run_script("task_report.py", "--queue", queue, "--reports-dir", str(reports),
                        log_dir=logs)
    assert result.returncode == 0, result.stderr
    assert "collected" not in result.stdout, "read from the results stream: nothing moved"
    assert len(list((reports / f"{queue}.runs").glob("*.jsonl"))) == 1, "a local copy"
    lines = result.stdout.splitlines()
    table_rows = [line.split() for line in lines if line.strip().startswith(("worker-",))]
    assert len(table_rows) == 3
    assert sum(int(parts[1]) for parts in table_rows) == 12, "per-worker counts add up"
    busy = sum(float(parts[4]) for parts in table_rows)
    expected = sum(row.count(".") for row in rows) * spd
    assert abs(busy - expected) < 0.1 + 0.05 * expected, (busy, expected)
    task_lines = [line for line in lines if line.strip().endswith("done") and "task " in line]
    assert sorted(int(line.split()[0]) for line in task_lines) == list(range(1, 13)), \
        "every task appears exactly once"

    svg_path = next(reports.glob(f"{queue}-*.svg"))
    assert str(svg_path) in result.stdout
    tree = ET.parse(svg_path)
    lanes = tree.getroot().findall(f"{SVG}rect[@class='lane']")
    assert len(lanes) == 3, "one lane per worker"
    assert len(tree.getroot().findall(f"{SVG}g[@class='task']")) == 12

    again = run_script("task_report.py", "--queue", queue, "--reports-dir", str(reports),
                       "--offline", log_dir=logs)
    assert again.returncode == 0 and "12 tasks done by 3 workers" in again.stdout

    runs = run_script("task_report.py", "--queue", queue, "--reports-dir", str(reports),
                      "--offline", "--list", log_dir=logs)
    run_lines = [line.split() for line in runs.stdout.splitlines()[1:]]
    assert len(run_lines) == 1 and run_lines[0][3:5] == ["12", "3"], runs.stdout

    status = run_script("task_report.py", "--queue", queue, "--status", log_dir=logs)
    rows = {line.split()[0]: line.split()[1:] for line in status.stdout.splitlines()[1:]}
    assert rows[queue] == ["0", "0"] and rows[queue + ".dead"] == ["0", "0"], status.stdout


def test_report_with_no_events_is_one_clear_line(queue, logs, tmp_path):
    result = run_script("task_report.py", "--queue", queue, "--reports-dir", str(tmp_path),
                        log_dir=logs)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no results recorded" in result.stderr


def test_latest_run_and_run_filter():
    events = [
        {"run_id": "a", "worker": "w1", "started": 1.0, "finished": 2.0, "seconds": 1.0,
         "outcome": "done", "row": 1, "task": "x."},
        {"run_id": "b", "worker": "w2", "started": 5.0, "finished": 6.0, "seconds": 1.0,
         "outcome": "dead", "row": 1, "task": "y."},
    ]
    assert latest_run(events) == "b"
    report = RunReport(events, "a", "q")
    assert [w.worker for w in report.workers] == ["w1"]
    assert "1 tasks done by 1 workers" in report.table()


def test_the_report_says_when_its_counts_cannot_be_complete(queue, logs, tmp_path):
    """Four of eight tasks were taken by another consumer (not ours) and never done: the
    report must say that its counts are incomplete instead of presenting half the run as the
    whole. A worker with --no-events sends no live events, but its results are recorded."""
    import pika

    from tests.helpers import MAIN_URL

    csv = write_csv(tmp_path / "t.csv", [f"task {n}." for n in range(8)])
    assert run_script("emitter_of_tasks.py", "--queue", queue, "--file", str(csv),
                      log_dir=logs).returncode == 0
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    channel = connection.channel()
    for _ in range(4):
        method, _properties, _body = channel.basic_get(queue)
        channel.basic_ack(method.delivery_tag)  # taken away, never done
    connection.close()
    quiet = start_worker("--queue", queue, "--name", "quiet", "--no-events",
                         "--seconds-per-dot", "0.05", "--exit-when-idle", "1.5", log_dir=logs,
                         out=tmp_path / "quiet.out")
    assert quiet.wait(timeout=60) == 0
    result = run_script("task_report.py", "--queue", queue, "--reports-dir",
                        str(tmp_path / "reports"), log_dir=logs)
    assert result.returncode == 0, result.stderr
    assert "8 tasks published" in result.stdout, result.stdout
    assert "4 tasks done by 1 workers" in result.stdout, "--no-events: recorded all the same"
    assert "incomplete: 8 tasks published, the record shows 4 done" in result.stdout


def test_runs_recorded_by_older_versions_stay_readable(queue, logs, tmp_path):
    """Workers before 0.4 sent task events to the <queue>.events queue; the report still
    collects them (into reports/<queue>.events.jsonl) and reports their run."""
    import json

    import pika

    from tests.helpers import MAIN_URL

    events = [{"kind": "task", "id": f"old-{n}", "run_id": "20261101-101500-abcdef",
               "worker": "old", "host": "h", "message_id": f"t.csv:{n}:0123456789ab",
               "row": n, "task": f"t{n}", "outcome": "done", "received": 1.0 + n,
               "started": 1.0 + n, "finished": 1.5 + n, "seconds": 0.5, "attempt": 1,
               "redelivered": False, "reason": "", "result": f"r{n}"} for n in (1, 2, 3)]
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    channel = connection.channel()
    channel.queue_declare(f"{queue}.events", durable=True)
    channel.confirm_delivery()
    channel.basic_publish("", f"{queue}.events", json.dumps(events).encode())
    connection.close()
    out = tmp_path / "old.csv"
    result = run_script("task_report.py", "--queue", queue, "--reports-dir",
                        str(tmp_path / "reports"), "--csv", str(out), log_dir=logs)
    assert result.returncode == 0, result.stderr
    assert "3 tasks done by 1 workers" in result.stdout
    assert "results: 3 tasks written" in result.stdout
    again = run_script("task_report.py", "--queue", queue, "--reports-dir",
                       str(tmp_path / "reports"), "--offline", log_dir=logs)
    assert again.returncode == 0 and "3 tasks done by 1 workers" in again.stdout
