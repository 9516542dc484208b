"""The who-did-what report checked against a run with known tasks, on the real broker."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from taskqueue.views.report import RunReport
from taskqueue.views.store import latest_run
from tests.helpers import consumers, run_script, start_worker, wait_for, write_csv

SVG = "{http://www.w3.org/2000/svg}"


def test_report_of_12_tasks_by_3_workers(queue, logs, tmp_path):
    spd = 0.05
    rows = [f"task {n}" + "." * (1 + n % 3) for n in range(12)]
    csv = write_csv(tmp_path / "t.csv", rows)
    workers = [start_worker("--queue", queue, "--name", f"worker-{n}", "--seconds-per-dot",
                            str(spd), "--exit-when-idle", "1.5", log_dir=logs,
                            out=tmp_path / f"w{n}.out") for n in range(3)]
    wait_for(lambda: consumers(queue) == 3, what="3 workers")
    assert run_script("emitter_of_tasks.py", "--queue", queue, "--file", str(csv),
                      log_dir=logs).returncode == 0
    assert [w.wait(timeout=60) for w in workers] == [0, 0, 0]

    reports = tmp_path / "reports"
    result = run_script("task_report.py", "--queue", queue, "--reports-dir", str(reports),
                        log_dir=logs)
    assert result.returncode == 0, result.stderr
    assert "collected 12 new task events" in result.stdout
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
    assert result.stderr.count("\n") == 1 and "no task events" in result.stderr


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
    """Half the work is done by a worker that sends no events: the report must say that its
    counts are incomplete instead of presenting half the run as the whole."""
    csv = write_csv(tmp_path / "t.csv", [f"task {n}." for n in range(8)])
    quiet = start_worker("--queue", queue, "--name", "quiet", "--no-events",
                         "--seconds-per-dot", "0.05", "--exit-when-idle", "1.5", log_dir=logs,
                         out=tmp_path / "quiet.out")
    loud = start_worker("--queue", queue, "--name", "loud", "--seconds-per-dot", "0.05",
                        "--exit-when-idle", "1.5", log_dir=logs, out=tmp_path / "loud.out")
    wait_for(lambda: consumers(queue) == 2, what="2 workers")
    assert run_script("emitter_of_tasks.py", "--queue", queue, "--file", str(csv),
                      log_dir=logs).returncode == 0
    assert quiet.wait(timeout=60) == 0 and loud.wait(timeout=60) == 0
    result = run_script("task_report.py", "--queue", queue, "--reports-dir",
                        str(tmp_path / "reports"), log_dir=logs)
    assert result.returncode == 0, result.stderr
    assert "8 tasks published" in result.stdout, result.stdout
    assert "incomplete" in result.stdout, result.stdout


def test_the_events_queue_is_bounded(queue, logs, tmp_path):
    import subprocess

    worker = start_worker("--queue", queue, "--exit-when-idle", "0.5", log_dir=logs,
                          out=tmp_path / "w.out")
    assert worker.wait(timeout=30) == 0
    listed = subprocess.run(["rabbitmqctl", "list_queues", "-q", "--no-table-headers", "name",
                             "arguments"], capture_output=True, text=True, timeout=30).stdout
    line = next(line for line in listed.splitlines() if line.startswith(queue + ".events\t"))
    assert "x-max-length" in line, line
