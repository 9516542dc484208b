"""One row per task from a run's records (results/table.py), and the emitter's read-ahead of
tasks (emitter/feed.py), without a broker."""

from __future__ import annotations

import csv
import io
import threading
from types import SimpleNamespace

from taskqueue.emitter.feed import CHUNK_TASKS, TaskFeed
from taskqueue.errors import UserError
from taskqueue.results.table import TaskTable, task_key, task_rows, write_tasks_csv

# --- results/table.py -------------------------------------------------------------------------


def attempt(row, outcome, attempt_number=1, run="r1", **more) -> dict:
    return {"run_id": run, "row": row, "task": f"t{row}", "outcome": outcome,
            "attempt": attempt_number, "worker": "w", "started": 0, "seconds": 1, **more}


def test_a_task_is_one_row_at_its_best_outcome_with_every_attempt_counted():
    records = [attempt(1, "failed", 1, reason="boom"), attempt(1, "done", 3, result="ok"),
               attempt(1, "done", 2, result="again"),  # ran twice (at-least-once): one row
               attempt(2, "failed", 1, reason="first"), attempt(2, "dead", 2, reason="gave up"),
               attempt(3, "failed", 1, reason="retrying"),
               attempt(4, "done", 1, run="r2"),  # another run
               {"kind": "mark", "run_id": "r1", "row": 5}]  # not a task record
    table, rows = task_rows("r1", lambda: records)
    by_row = {row["row"]: row for row in rows}
    assert sorted(by_row) == [1, 2, 3] and table.tasks == 3
    assert (by_row[1]["outcome"], by_row[1]["attempts"], by_row[1]["result_or_error"]) == \
        ("done", 3, "ok"), "the first done record stands for the task; attempts: the highest"
    assert (by_row[2]["outcome"], by_row[2]["result_or_error"]) == ("dead", "gave up")
    assert (by_row[3]["outcome"], by_row[3]["result_or_error"]) == ("failed", "retrying")
    assert table.counts() == {"failed": 1, "cancelled": 0, "dead": 1, "done": 1}


def test_tasks_without_a_row_are_told_apart_by_message_id():
    records = [{"run_id": "r", "message_id": "cli:a", "task": "x", "outcome": "failed"},
               {"run_id": "r", "message_id": "cli:a", "task": "x", "outcome": "done"},
               {"run_id": "r", "message_id": "cli:b", "task": "x", "outcome": "done"}]
    table, rows = task_rows("r", lambda: records)
    assert [(row["row"], row["message_id"], row["outcome"]) for row in rows] == [
        ("-", "cli:a", "done"), ("-", "cli:b", "done")]
    assert table.counts()["done"] == 2
    assert task_key(records[0]) == "cli:a" and task_key(attempt(7, "done")) == 7


def test_a_record_is_deciding_only_once():
    table = TaskTable()
    record = attempt(1, "done")
    table.add(record)
    assert table.deciding(record) == 1
    assert table.deciding(record) is None, "its line is written already"
    assert table.deciding(attempt(9, "done")) is None, "a row the first pass never saw"


def test_the_csv_has_the_columns_and_for_spreadsheets_formulas_become_text():
    records = [attempt(1, "done", result="=HYPERLINK(1)"), attempt(2, "failed", reason="-5")]
    plain, safe = io.StringIO(), io.StringIO()
    write_tasks_csv(plain, "r1", lambda: records)
    write_tasks_csv(safe, "r1", lambda: records, for_spreadsheets=True)
    plain_rows = list(csv.DictReader(io.StringIO(plain.getvalue())))
    safe_rows = list(csv.DictReader(io.StringIO(safe.getvalue())))
    assert plain_rows[0]["result_or_error"] == "=HYPERLINK(1)"
    assert safe_rows[0]["result_or_error"] == "'=HYPERLINK(1)"
    assert safe_rows[1]["result_or_error"] == "-5", "a number stays a number"
    assert list(plain_rows[0])[:3] == ["row", "task", "worker"]


# --- emitter/feed.py --------------------------------------------------------------------------


def task(number: int) -> SimpleNamespace:
    return SimpleNamespace(body=f"task {number}".encode(), number=number)


def take_all(feed: TaskFeed, woken: threading.Event) -> list:
    """Take until the feed is finished, waiting for its wake-up whenever it has nothing."""
    taken = []
    while not feed.finished:
        woken.clear()
        item = feed.take()
        if item is not None:
            taken.append(item)
        elif not feed.finished:
            assert woken.wait(60), "the reader never woke the loop"  # not a timing: a hang
    return taken


def test_every_task_comes_out_once_in_order_across_chunks():
    woken = threading.Event()
    count = 2 * CHUNK_TASKS + 3
    feed = TaskFeed(iter([task(n) for n in range(count)]), woken.set)
    assert [t.number for t in take_all(feed, woken)] == list(range(count))
    assert feed.error is None and feed.take() is None


def test_an_input_error_comes_after_the_tasks_read_before_it():
    def tasks():
        yield task(1)
        yield task(2)
        raise UserError("tasks.csv line 3: unclosed quote")

    def broken():
        yield task(1)
        raise OSError("stdin gone")

    woken = threading.Event()
    feed = TaskFeed(tasks(), woken.set)
    assert [t.number for t in take_all(feed, woken)] == [1, 2]
    assert str(feed.error) == "tasks.csv line 3: unclosed quote"
    feed = TaskFeed(broken(), woken.set)
    assert [t.number for t in take_all(feed, woken)] == [1]
    assert isinstance(feed.error, UserError) and "stdin gone" in str(feed.error)
