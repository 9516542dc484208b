"""A task's own page, the sortable run table, the dead tasks of a reason a page at a time, and
deleting dead tasks from the page (issue 30, item 5): headless chromium through the printed
address of a real ``task_report.py --serve``, a real worker and the real broker, with a run of
done, retried-then-done and dead tasks (more dead than a page)."""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest
from playwright.sync_api import Page

from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.results.reader import RecordReader
from tests.dashboard import (
    form_post,
    session_cookies,
    start_dashboard,
)
from tests.helpers import MAIN_URL, queue_state, run_script, start_worker, wait_for, write_csv
from tests.task_page_handlers import DETAIL

DONE, FLAKY, DOOMED, CURSED = 4, 3, 53, 2  # 53 dead of one reason: more than the 50 of a page


@pytest.fixture
def finished_run(queue, logs, tmp_path, monkeypatch):
    """(dashboard, run id): a run over, with every kind of task, its worker stopped."""
    monkeypatch.setenv("FLAKY_DIR", str(tmp_path))
    board = start_dashboard(queue, tmp_path, logs)
    worker = start_worker("--queue", queue, "--handler", "tests.task_page_handlers:flaky_or_doomed",
                          "--in-process", "--max-retries", "1", "--retry-delay", "0.1",
                          "--name", "w1", log_dir=logs, out=tmp_path / "w.out")
    rows = ([f"fine {n}" for n in range(DONE)] + [f"flaky {n}" for n in range(FLAKY)]
            + [f"doomed {n}" for n in range(DOOMED)] + [f"cursed {n}" for n in range(CURSED)])
    emitted = run_script("emitter_of_tasks.py", "--queue", queue, "--file",
                         str(write_csv(tmp_path / "t.csv", rows)), log_dir=logs)
    assert emitted.returncode == 0, emitted.stdout + emitted.stderr
    run = re.search(r"\(run (\S+)\)", emitted.stdout)[1]
    wait_for(lambda: (queue_state(QueueSpec(queue).dead_name) or (0, 0))[0] == DOOMED + CURSED,
             timeout=120, what="every doomed task dead")
    worker.terminate()
    worker.wait(timeout=30)

    def counted() -> bool:
        status, _h, body = board.request("GET", f"/runs/{run}/tasks.json")
        dead = f'"dead": {DOOMED + CURSED}'.encode()
        return status == 200 and f'"done": {DONE + FLAKY}'.encode() in body and dead in body

    wait_for(counted, timeout=60, what="the dashboard to have read the whole run")
    yield board, run
    board.stop()


def column(page: Page, n: int) -> list[str]:
    return page.locator(f"#tasks tbody tr td:nth-child({n})").all_inner_texts()


def test_a_tasks_page_from_the_sorted_run_table_and_the_dead_list_and_deleting_dead_tasks(
        page, finished_run, queue):
    board, run = finished_run
    page.goto(board.address)
    page.goto(f"{board.base}/runs/{run}")
    page.wait_for_selector("#tasks tbody tr")

    # Sorted by the server, the whole run (not a page): attempts, most first; then rows.
    page.click("#tasks th[data-sort=attempts]")
    page.click("#tasks th[data-sort=attempts]")
    page.wait_for_selector("#tasks th[data-sort=attempts][aria-sort=descending]")
    wait_for(lambda: column(page, 6)[0] == "2", what="the most attempts first")
    page.click("#tasks th[data-sort=outcome]")
    wait_for(lambda: column(page, 7)[:DONE + FLAKY] == ["done"] * (DONE + FLAKY),
             what="done tasks first")
    page.click("#tasks th[data-sort=row]")
    page.click("#tasks th[data-sort=row]")
    wait_for(lambda: column(page, 1)[0] == str(DONE + FLAKY + DOOMED + CURSED),
             what="the last row first")
    numbers = [int(n) for n in column(page, 1)]
    assert numbers == sorted(numbers, reverse=True) and len(numbers) == 50

    # A retried task's page, from its row: both attempts, each with its text in full.
    page.fill("input[name=q]", "flaky 1")
    page.click("#filter button[type=submit]")
    wait_for(lambda: column(page, 2) == ["flaky 1"], what="the flaky task alone")
    page.click("#tasks tbody a.task-link")
    page.wait_for_url(re.compile(rf"/runs/{re.escape(run)}/tasks/\d+$"))
    page.wait_for_selector("#task-attempts tbody tr:nth-child(2)")
    attempts = page.locator("#task-attempts tbody tr").all_inner_texts()
    assert [line.split("\t")[5] for line in attempts] == ["failed", "done"], attempts
    assert all("w1" in line and line.split("\t")[4] for line in attempts), attempts
    texts = page.locator("#task-texts pre").all_inner_texts()
    assert texts == ["RuntimeError: first try fails", "FLAKY 1"], texts
    task_url = page.url
    page.goto(task_url)  # its own address: shared, it opens the same
    page.wait_for_selector("#task-attempts tbody tr:nth-child(2)")

    # The dead list: a reason's tasks a page at a time, each to its page with the full error.
    page.goto(f"{board.base}/dead?run={run}")
    page.click("a.all-of-reason")
    page.wait_for_selector("#reason-tasks")
    assert page.locator("#reason-tasks li").count() == 50
    assert "page 1 of 2" in page.inner_text("#reason-page")
    page.click("#reason-next")
    page.wait_for_selector("#reason-page:has-text('page 2 of 2')")
    assert page.locator("#reason-tasks li").count() == DOOMED - 50
    assert "END-OF-ERROR" not in page.inner_text("#reason-tasks"), "the list keeps 1,000"
    page.click("#reason-tasks a.task-link >> nth=0")
    page.wait_for_selector("#task-texts pre")
    full = page.locator("#task-texts pre").all_inner_texts()
    assert len(full) == 2 and all(text.endswith(DETAIL) for text in full), full[0][-80:]

    # One dead task by its id (the task page's button, once app.js passes data-id): preview,
    # then the POST with its ticket, as a browser sends it.
    one = DONE + FLAKY + DOOMED + 1  # a cursed one
    attempts = board.json(f"/runs/{run}/task.json?row={one}")
    assert attempts[-1]["outcome"] == "dead" and attempts[-1]["task"] == "cursed 0", attempts
    message_id = attempts[-1]["message_id"]
    by_id = board.request("GET", f"/runs/{run}/tasks/id/{quote(message_id, safe='')}")
    assert by_id[0] == 200 and b'data-row=""' in by_id[2], "a task without a row: by its id"
    assert board.request("GET", f"/runs/{run}/tasks/999")[0] == 404
    preview = board.json(f"/control/preview.json?action=discard-dead&run={run}&id="
                         f"{quote(message_id)}")
    assert preview["question"] == f"Delete dead task {message_id!r} of run {run} for good?"
    cookies, xsrf = session_cookies(board)
    status, body = form_post(board, "/control", {"ticket": preview["ticket"]},
                             cookies=cookies, xsrf=xsrf)
    assert status == 200 and f"1 of the {DOOMED + CURSED} dead tasks".encode() in body, body
    assert queue_state(QueueSpec(queue).dead_name)[0] == DOOMED + CURSED - 1

    # Delete these, with the confirmation: gone from .dead, recorded as the CLI records it.
    page.go_back()
    page.wait_for_selector("#of-reason button[data-action=discard-dead]")
    page.click("#of-reason button[data-action=discard-dead]")
    page.wait_for_selector("#confirm[open]")
    question = page.inner_text("#confirm-question")
    assert question.startswith(f"Delete {DOOMED} dead task(s) of run {run} whose reason"), question
    page.click("#confirm-yes")
    page.wait_for_selector(f"#toast.ok:has-text('{DOOMED} of the {DOOMED + CURSED - 1} dead')")
    assert "recorded" in page.inner_text("#toast")
    assert queue_state(QueueSpec(queue).dead_name)[0] == CURSED - 1, "the other reason's stay"
    reader = RecordReader(BrokerSettings([MAIN_URL]), QueueSpec(queue), idle=1.0)
    wrote = [r for r in reader.records() if r.get("kind") == "discard"]
    assert len(wrote) == DOOMED + 1 and {r["run_id"] for r in wrote} == {run}
    assert [r["row"] for r in wrote if r["message_id"] == message_id] == [int(one)]
    assert all(r["by"].startswith("dashboard: token from 127.0.0.1") for r in wrote), wrote[0]
    assert "discard-dead --run" in board.out.read_text()


@pytest.mark.fast
def test_rows_sort_by_a_column_and_a_task_has_one_address():
    from taskqueue.web.runs import sorted_rows, task_path

    rows = [{"row": 2, "worker": "b", "started": "2026-12-05T10:00:02", "seconds": "10.000",
             "attempts": 1, "outcome": "failed", "message_id": "x"},
            {"row": "-", "worker": "a", "started": "2026-12-05T10:00:01", "seconds": "9.500",
             "attempts": 3, "outcome": "done", "message_id": "other:id"},
            {"row": 10, "worker": "c", "started": "2026-12-05T10:00:00", "seconds": "0.100",
             "attempts": 2, "outcome": "dead", "message_id": "y"}]

    def order(column: str, descending: bool = False) -> list[object]:
        return [row["row"] for row in sorted_rows(rows, column, descending)]

    assert order("row") == [2, 10, "-"], "by number (not as text), rowless last"
    assert order("seconds") == [10, "-", 2], "as numbers: 0.1 < 9.5 < 10"
    assert order("outcome") == ["-", 10, 2] and order("worker", True) == [10, 2, "-"]
    assert order("attempts", True) == ["-", 10, 2] and order("started") == [10, "-", 2]
    assert task_path("20261205T1-a", 7, "f:7:ab") == "runs/20261205T1-a/tasks/7"
    assert task_path("r", "-", "a/b?c") == "runs/r/tasks/id/a%2Fb%3Fc"


@pytest.mark.fast
def test_a_task_deleted_from_dead_leaves_the_dead_lists_and_its_page_says_who(tmp_path):
    """With the discard records in a run's copy (web/copies.py copying them), the dead page,
    its counts and the task's page know what discard-dead deleted."""
    import json

    from taskqueue.web.copies import RunCopies
    from taskqueue.web.runs import RunPages

    copies = RunCopies(tmp_path, "q")
    copies.start()
    dead = [{"kind": "task", "run_id": "r", "row": n, "message_id": f"t:{n}:x", "task": f"t{n}",
             "outcome": "dead", "attempt": 1, "worker": "w", "started": 1.0 + n,
             "reason": f"ValueError: bad {n}"} for n in (1, 2, 3)]
    copies.add(dead)
    gone = {"kind": "discard", "by": "alice@ops", "time": 9.0, "queue": "q", "run_id": "r",
            "message_id": "t:2:x", "row": 2, "task": "t2", "reason": "ValueError: bad 2"}
    with open(copies.path("r"), "a", encoding="utf-8") as copy:
        copy.write(json.dumps(gone) + "\n")
    pages = RunPages(copies, "q")
    assert pages.dead("r")["total"] == 2
    assert pages.dead_matching("r", "bad") == 2
    assert [t["row"] for t in pages.dead_of_reason("r", "ValueError: bad N")["tasks"]] == [1, 3]
    lines = pages.attempts("r", 2)
    assert [line["outcome"] for line in lines] == ["dead", "deleted"]
    assert lines[-1]["reason"] == "deleted from q.dead by alice@ops"
