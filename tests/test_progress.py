"""Progress from inside a task (issue 31, item 2), against the real broker with real workers:
a handler's ``taskqueue.progress`` calls and a ``--command`` program's progress lines are
shown by ``task_report.py --watch`` while the task runs, and the attempt's record keeps the
last one; a hostile note stays harmless and bounded, a bad fraction never fails a task."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.results.history import History
from taskqueue.wire.progress import MAX_NOTE
from tests.helpers import MAIN_URL, ROOT, run_script, start_script, start_worker, wait_for


def emit(queue: str, logs: Path, text: str) -> None:
    result = run_script("emitter_of_tasks.py", "--queue", queue, "--message", text,
                        log_dir=logs)
    assert result.returncode == 0, result.stdout + result.stderr


def task_records(queue: str, tmp_path: Path) -> list[dict]:
    """The latest run's task records, as the results stream has them."""
    history = History(BrokerSettings([MAIN_URL]), QueueSpec(queue), tmp_path / "reports")
    run = history.latest_run() or ""
    return [record for record in history.run_records(run)()
            if (record.get("kind") or "task") == "task"]


class Watch:
    """``task_report.py --watch`` off a terminal: one plain line a second, into a file."""

    def __init__(self, queue: str, logs: Path, tmp_path: Path) -> None:
        self.out = tmp_path / "watch.out"
        self.process = start_script("task_report.py", "--watch", "--queue", queue,
                                    log_dir=logs, out=self.out)

    def shows(self, text: str) -> str | None:
        """The first line that shows *text*, if one does yet."""
        return next((line for line in self.out.read_text().splitlines() if text in line),
                    None)

    def close(self) -> str:
        self.process.terminate()
        self.process.wait(timeout=30)
        return self.out.read_text()


def run_until_shown(queue: str, logs: Path, tmp_path: Path, worker_args: list[str],
                    shown: str) -> tuple[str, str, list[dict]]:
    """One task whose text is a file to wait for: the worker works on it until the watch
    view shows *shown*, then the file is made and the task ends. (The line, the view's whole
    output, the task records.)"""
    release = tmp_path / "release"
    emit(queue, logs, str(release))
    out = tmp_path / "worker.out"
    worker = start_worker("--queue", queue, *worker_args, "--exit-when-idle", "1.5",
                          log_dir=logs, out=out)
    watch = Watch(queue, logs, tmp_path)
    try:
        line = wait_for(lambda: watch.shows(shown), timeout=60, what=f"the view to show {shown}")
        release.touch()
        assert worker.wait(timeout=60) == 0, out.read_text()
    finally:
        release.touch()
        seen = watch.close()
    return line, seen, task_records(queue, tmp_path)


def test_a_handlers_progress_is_shown_live_and_its_last_kept_in_the_record(queue, logs,
                                                                          tmp_path):
    line, _seen, records = run_until_shown(
        queue, logs, tmp_path, ["--handler", "tests.progress_handlers:steps_then_wait"],
        "busy row 1 40% step 2 of 5")
    assert f"{queue}" in line
    [record] = records
    assert record["outcome"] == "done" and record["result"] == "finished"
    assert record["progress"] == {"fraction": 1.0, "note": "step 5 of 5"}, "the last one"


def test_a_programs_progress_lines_are_its_progress_not_its_result(queue, logs, tmp_path):
    program = f"{sys.executable} {ROOT / 'tests' / 'progress_program.py'}"
    _line, _seen, records = run_until_shown(
        queue, logs, tmp_path, ["--command", program], "busy row 1 40% step 2 of 5")
    [record] = records
    assert record["outcome"] == "done"
    assert record["result"] == ("first line of the result\nnot progress: 90%\n"
                                "last line of the result"), "other lines untouched"
    assert record["progress"] == {"fraction": 1.0, "note": "all done"}


def test_a_hostile_note_is_bounded_and_harmless_and_bad_fractions_fail_nothing(queue, logs,
                                                                              tmp_path):
    line, seen, records = run_until_shown(
        queue, logs, tmp_path, ["--handler", "tests.progress_handlers:hostile_then_wait"],
        "busy row 1 50%")
    assert "\\x1b[31mred\\x07 \\u202eevil\\u202c" in line, "stand-ins, not the characters"
    assert not any(char in seen for char in "\x1b\x07\u202e"), "nothing raw on the terminal"
    [record] = records
    assert record["outcome"] == "done" and record["result"] == "survived"
    note = record["progress"]["note"]
    assert record["progress"]["fraction"] == 0.5
    assert note.startswith("\x1b[31mred\x07 \u202eevil"), "the record keeps the text as data"
    assert len(note.encode("utf-8")) <= MAX_NOTE + len("…".encode()), "bounded"
    worker_out = (tmp_path / "worker.out").read_text()
    assert worker_out.count("taskqueue.progress: ignored") == 1, "one warning, not six"


def test_progress_outside_a_worker_does_nothing():
    code = ("import taskqueue; taskqueue.progress(0.5, 'x'); taskqueue.progress(7); "
            "from taskqueue import progress; progress(1.0); print('fine')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.returncode == 0 and result.stdout == "fine\n", result.stderr
