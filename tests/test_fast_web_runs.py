"""The run pages' indexes (web/runs.py) on small real copies, no broker: only the few runs last
viewed keep theirs in memory, and a run whose index was dropped still pages right.

Found by a benchmark (bench/web.py): each run page viewed kept its index (21-27 MB for a run
of 100,000 tasks) until the server stopped: 48 MB -> 194 MB after six run pages."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator

import pytest

from taskqueue.web.copies import RunCopies
from taskqueue.web.runs import KEPT_INDEXES, RunPages

pytestmark = pytest.mark.fast

RUNS = [f"R{n}" for n in range(10)]


def tasks(run: str, rows: range, outcome: str = "done") -> list[dict]:
    return [{"kind": "task", "run_id": run, "row": row, "message_id": f"f.csv:{row}:{run}",
             "task": f"{run}-t{row}", "outcome": outcome, "attempt": 1, "worker": "w",
             "started": float(row), "seconds": 0.5} for row in rows]


@pytest.fixture
def pages(tmp_path) -> Iterator[RunPages]:
    copies = RunCopies(tmp_path, "q")
    copies.start()
    for n, run in enumerate(RUNS):
        copies.add(tasks(run, range(1, 6 + n)))  # run Rn has 5 + n tasks
    yield RunPages(copies, "q")
    copies.close()


def shown(pages: RunPages, run: str, page: int = 1, size: int = 3) -> list[str]:
    return [row["task"] for row in pages.page(run, page=page, size=size)["rows"]]


def test_ten_runs_viewed_keep_the_last_few_indexes(pages):
    made = []
    for run in RUNS:
        assert shown(pages, run) == [f"{run}-t1", f"{run}-t2", f"{run}-t3"]
        made.append(weakref.ref(pages.index(run)))
    gc.collect()
    assert [ref() is not None for ref in made] == [False] * 6 + [True] * KEPT_INDEXES, \
        "only the last runs viewed keep their index in memory"


def test_a_run_viewed_again_is_kept_and_the_least_recent_dropped(pages):
    made = {run: weakref.ref(pages.index(run)) for run in RUNS[:KEPT_INDEXES]}
    pages.index(RUNS[0])  # viewed again: the most recent now
    pages.index(RUNS[1])  # and R1: R2 is the least recent
    pages.index(RUNS[KEPT_INDEXES])
    gc.collect()
    assert [run for run, ref in made.items() if ref() is None] == [RUNS[2]]
    assert pages.index(RUNS[0]) is made[RUNS[0]](), "kept, not indexed again"


def test_a_dropped_run_pages_right_from_its_copy(pages):
    before = pages.page(RUNS[3], page=2, size=3)
    for run in RUNS:
        shown(pages, run)
    again = pages.page(RUNS[3], page=2, size=3)  # its index made again, from the copy
    assert again["rows"] == before["rows"] and again["matching"] == before["matching"] == 8
    assert again["counts"] == before["counts"]
    assert shown(pages, RUNS[3], page=3) == ["R3-t7", "R3-t8"]
    assert [r["task"] for r in pages.page(RUNS[3], outcome="done", size=50)["rows"]] == [
        f"R3-t{row}" for row in range(1, 9)]


def test_pages_of_many_runs_from_many_threads_stay_right(pages):
    """index() is called from the server's worker threads: runs dropped and indexed again
    meanwhile still give each page its own run's rows."""
    wrong: list[str] = []

    def view(offset: int) -> None:
        for n in range(40):
            run = RUNS[(offset + n) % len(RUNS)]
            if shown(pages, run, page=2) != [f"{run}-t4", f"{run}-t5"] + (
                    [f"{run}-t6"] if run != "R0" else []):
                wrong.append(run)

    threads = [threading.Thread(target=view, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not wrong and len(pages._runs) <= KEPT_INDEXES
