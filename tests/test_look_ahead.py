"""A one-slot worker holds its next task while its tasks are short, and lets it go when the
running one grows long and no task is ready (worker/look_ahead.py, issue 29 item 5), on the real
broker."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import done_rows, queue_state, run_script, start_worker, wait_for, write_csv
from tests.stopping import stop_when

LET_GO = "waited in hand behind a long task: it goes back to the queue unstarted"


def emit(queue: str, logs: Path, path: Path, rows: list[str]) -> None:
    done = run_script("emitter_of_tasks.py", "--queue", queue, "--file",
                      str(write_csv(path, rows)), log_dir=logs)
    assert done.returncode == 0, done.stderr


def after_short_tasks(queue: str, logs: Path, tmp_path: Path):
    """One worker, one slot, 20 zero-work tasks done: it subscribes a second time (two
    consumers, one worker) and stays so while it waits."""
    out = tmp_path / "w.out"
    worker = start_worker("--queue", queue, "--name", "w", "--seconds-per-dot", "0.1",
                          log_dir=logs, out=out)
    wait_for(lambda: (queue_state(queue) or (0, 0))[1] == 1, what="the worker's subscription")
    emit(queue, logs, tmp_path / "shorts.csv", [f"short {n}" for n in range(1, 21)])
    wait_for(lambda: sum(done_rows(out).values()) == 20 and queue_state(queue) == (0, 2),
             what="20 short tasks done, a second subscription")
    return worker, out


def ran_once(said: str, text: str) -> bool:
    return len([line for line in said.splitlines()
                if "] done row" in line and f"'{text}'" in line]) == 1


def test_a_long_task_with_none_ready_gives_the_held_task_back(queue, logs, tmp_path):
    worker, out = after_short_tasks(queue, logs, tmp_path)
    # A long task (4 s) and one after it: the after one comes to the second subscription
    # (nobody else is there to take it); within a beat or two of the long one's start, none
    # ready, it goes back unstarted, to wait in the queue (another worker could take it), and
    # that subscription is cancelled.
    emit(queue, logs, tmp_path / "mixed.csv", ["long " + "." * 40, "after"])
    wait_for(lambda: queue_state(queue) == (1, 1), timeout=3.5,
             what="the task after the long one back in the queue, one subscription left")
    assert "'after'" not in out.read_text(), "given back unstarted"
    # The long one ends, the after one runs (once), and short tasks bring the second back.
    assert stop_when(lambda: sum(done_rows(out).values()) == 22 and queue_state(queue) == (0, 2),
                     queue, [worker], log_dir=logs, what="all 22 done") == [0]
    said = out.read_text()
    assert ran_once(said, "after") and said.count(LET_GO) == 1, said[-3000:]
    assert "when we stopped taking tasks" not in said, said[-3000:]


def test_while_tasks_are_ready_the_held_task_stays(queue, logs, tmp_path):
    """Tasks ready: no worker is idle (each would be taking one), so holding costs nobody
    anything and nothing is given back."""
    worker, out = after_short_tasks(queue, logs, tmp_path)
    emit(queue, logs, tmp_path / "mixed.csv", ["long " + "." * 30, "next", "last"])
    wait_for(lambda: queue_state(queue) == (1, 2), what="one held, one ready")
    assert stop_when(lambda: sum(done_rows(out).values()) == 23 and queue_state(queue) == (0, 2),
                     queue, [worker], log_dir=logs, what="all 23 done") == [0]
    said = out.read_text()
    assert LET_GO not in said and ran_once(said, "next") and ran_once(said, "last"), said[-3000:]
