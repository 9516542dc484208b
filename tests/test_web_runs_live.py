"""The live page's run cards with overlapping runs and late retries (issue 30, item 2), in
headless chromium through the printed URL of a real ``task_report.py --serve``, a real worker
and the real broker.

Run A has tasks that fail their first attempt and are retried seconds later; run B is emitted
while those retries wait, so A's retries finish among (or after) B's tasks. The page is sampled
over and over until both runs are done: each run's card shows its own figures, its done count
never goes down, its total is always shown and is what its emitter published; at the end each
card says what the Runs page says for that run.
"""

from __future__ import annotations

import re

from playwright.sync_api import Page

from tests.dashboard import start_dashboard
from tests.helpers import done_counts, start_worker, wait_for, write_csv
from tests.test_web_browser import emit

ROWS = 40  # per run
LATE = 6  # of run A's rows: fail once, retried after the worker's --retry-delay
RETRY_DELAY = "6"

# Every run card on the page: its run (the link in its heading) and its "done" figure.
CARDS = """() => [...document.querySelectorAll("#run-card, .run-card")].map((card) => ({
  run: card.querySelector("h2 a").textContent,
  done: card.querySelector("dl dd").textContent }))"""


def figures(text: str) -> tuple[int, int | None]:
    """A card's "done" figure: "12 / 40" -> (12, 40); "12" -> (12, None)."""
    match = re.fullmatch(r"(\d+)(?: / (\d+))?", text.strip())
    assert match, f"not a done figure: {text!r}"
    return int(match[1]), int(match[2]) if match[2] else None


def runs_page(page: Page, base: str) -> dict[str, tuple[int, int]]:
    """The Runs page: run -> (done, total)."""
    page.goto(f"{base}/runs")
    rows = page.eval_on_selector_all("#runs tbody tr", """(rows) => rows.map((row) =>
        [...row.querySelectorAll("td")].map((cell) => cell.textContent))""")
    return {cells[0]: (int(cells[4]), int(cells[3])) for cells in rows}


def test_each_run_has_its_own_card_that_never_goes_back_and_agrees_with_the_runs_page(
        browser, queue, logs, tmp_path):
    board = start_dashboard(queue, tmp_path, logs)
    page = browser.new_context().new_page()
    page.goto(board.address)
    page.wait_for_selector("#connection.ok")
    out = tmp_path / "w1.out"
    start_worker("--queue", queue, "--name", "w1", "--handler",
                 "tests.runs_live_handlers:late_once", "--retry-delay", RETRY_DELAY,
                 log_dir=logs, out=out)
    marks = tmp_path / "marks"
    marks.mkdir()
    late = [f"late:{marks / f'a{n}'} .." for n in range(LATE)]
    run_a = emit(queue, logs, write_csv(tmp_path / "a.csv", late + [
        f"a{n} .." for n in range(ROWS - LATE)]))
    wait_for(lambda: len(list(marks.iterdir())) == LATE, timeout=60,
             what="run A's late tasks to fail once")
    run_b = emit(queue, logs, write_csv(tmp_path / "b.csv", [f"b{n} .." for n in range(ROWS)]))
    assert run_a != run_b

    samples: dict[str, list[str]] = {run_a: [], run_b: []}

    def sample() -> None:
        for card in page.evaluate(CARDS):
            if card["run"] in samples:
                samples[card["run"]].append(card["done"])

    def all_done() -> bool:
        sample()
        return sum(done_counts(out).values()) >= 2 * ROWS

    wait_for(all_done, timeout=180, interval=0.1, what="both runs done by the worker")
    last_update = page.inner_text("#updated")
    for _ in range(3):  # a few more snapshots: the page catches up with the record
        wait_for(lambda shown=last_update: sample() or page.inner_text("#updated") != shown,
                 timeout=30, what="the next snapshot")
        last_update = page.inner_text("#updated")
    print({run: len(seen) for run, seen in samples.items()}, "samples per run")

    for run, seen in samples.items():
        assert seen, f"run {run} never had a card"
        shown = [figures(text) for text in seen]
        without_total = [text for text in seen if figures(text)[1] is None]
        assert not without_total, f"run {run}: shown without its total: {without_total[:5]}"
        assert {total for _done, total in shown} == {ROWS}, \
            f"run {run}: a total other than the {ROWS} published: {sorted(set(seen))[:10]}"
        dones = [done for done, _total in shown]
        went_back = [(a, b) for a, b in zip(dones, dones[1:]) if b < a]
        assert not went_back, f"run {run}: the done count went back: {went_back[:5]}"

    live = {card["run"]: figures(card["done"]) for card in page.evaluate(CARDS)}
    assert live.get(run_a) == live.get(run_b) == (ROWS, ROWS), live
    listed = runs_page(page, board.base)
    assert listed[run_a] == listed[run_b] == (ROWS, ROWS), listed
    board.stop()


def test_a_resumed_runs_total_is_what_its_emitters_published_together():
    """Pure (records made up): a run emitted by two emitters (the second with ``--resume``:
    the same run id) has for total the sum of what each published, on the Runs page and on
    the live card, while the second goes on and once it is done."""
    from taskqueue.web.totals import RecordTotals

    totals = RecordTotals()
    note = {"kind": "run", "run_id": "r1", "queue": "q", "time": 100.0}
    totals.add({**note, "id": "first-1", "state": "started", "total": 3500, "published": 0})
    totals.add({**note, "id": "first-2", "state": "finished", "total": 3500, "published": 2000})
    assert totals.run_list()[0]["total"] == 2000
    totals.add({**note, "id": "second-1", "state": "started", "total": 1500, "published": 0})
    assert totals.run_list()[0]["total"] == 3500, "what the second said it would publish"
    totals.add({**note, "id": "second-2", "state": "finished", "total": 1500, "published": 1500})
    assert totals.run_list()[0]["total"] == totals.live_runs(101.0)[0]["total"] == 3500
    assert totals.published == 3500


def test_the_live_page_lists_the_runs_going_on_newest_first_three_then_how_many_more():
    """Pure (records made up): runs heard from lately, or with tasks not final, are live; a
    run all done and quiet for RECENT_SECONDS is not; the newest three get cards."""
    from taskqueue.web.snapshot import RUNS_SHOWN, FeedState, live_json
    from taskqueue.web.totals import RECENT_SECONDS, STALLED_SECONDS

    state = FeedState("q")
    now = 10_000.0

    def run(run_id: str, at: float, total: int, done: int) -> None:
        state.totals.add({"kind": "run", "id": f"{run_id}e-1", "run_id": run_id,
                          "state": "started", "total": total, "published": 0, "time": at})
        for n in range(done):
            state.totals.add({"id": f"{run_id}w-{n}", "run_id": run_id, "outcome": "done",
                              "started": at, "finished": at + 1})

    run("old-done", now - RECENT_SECONDS - 10, 2, 2)  # finished and quiet: not live
    run("old-stalled", now - STALLED_SECONDS - 10, 2, 1)  # abandoned: not live
    run("a", now - 500, 2, 1)  # tasks not final: live
    run("b", now - 400, 2, 2)  # done lately: live
    run("c", now - 300, 3, 0)
    run("d", now - 200, 3, 1)
    data = live_json(state, now)
    assert [card["run"] for card in data["runs"]] == ["d", "c", "b"][:RUNS_SHOWN]
    assert data["runs_more"] == 1
    assert data["runs"][0]["done"] == 1 and data["runs"][0]["total"] == 3
