"""The history page (issue 30, item 6): attempts finished per minute by outcome and the queue's
depth, as a chart. In headless chromium through the printed address of a real
``task_report.py --serve``, a real worker and the real broker, with a run of done,
retried-then-done and dead tasks: the chart's minutes add up to what the record says happened
in each minute, after a restart of the dashboard too (from the record); and, without a
broker, the bounded aggregate behind it (a ring of a day's minutes)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict

import pytest
from playwright.sync_api import Page

from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.results.reader import RecordReader
from taskqueue.wire.record import kind_of
from tests.dashboard import Dashboard, start_dashboard
from tests.helpers import MAIN_URL, queue_state, run_script, start_worker, wait_for, write_csv

FINE, FLAKY, DOOMED = 5, 3, 4
SVG = "{http://www.w3.org/2000/svg}"
OUTCOMES = ("done", "failed", "dead", "cancelled")


def per_minute_in_record(queue: str) -> dict[int, Counter]:
    """Attempts by outcome, per minute they finished in (its start, seconds), as recorded."""
    reader = RecordReader(BrokerSettings([MAIN_URL]), QueueSpec(queue), idle=1.0)
    minutes: dict[int, Counter] = defaultdict(Counter)
    seen = set()
    for record in reader.records():
        if kind_of(record) != "task" or record.get("id") in seen:
            continue
        seen.add(record.get("id"))
        minutes[int(record["finished"] // 60) * 60][record.get("outcome", "done")] += 1
    return dict(minutes)


def chart_of(page: Page) -> ET.Element:
    """The chart in the page, parsed as XML (it must be valid)."""
    return ET.fromstring(page.locator("#history-chart svg").evaluate("e => e.outerHTML"))


def per_minute_in_chart(chart: ET.Element) -> dict[int, Counter]:
    minutes = {}
    for group in chart.iter(f"{SVG}g"):
        if group.get("class") == "minute":
            counts = Counter({name: int(group.get(f"data-{name}")) for name in OUTCOMES})
            minutes[int(group.get("data-time"))] = +counts  # zeros dropped, as in the record
            title = group.find(f"{SVG}title")
            assert title is not None and f"{counts['done']} done" in title.text, title
    return minutes


def depth_samples(chart: ET.Element) -> list[dict[str, int]]:
    return [{name: int(group.get(f"data-{name}")) for name in ("ready", "retrying", "dead")}
            for group in chart.iter(f"{SVG}g") if group.get("class") == "depth"]


def open_history(page: Page, board: Dashboard) -> None:
    """As a user does: the printed address, then the nav's History link."""
    page.goto(board.address)
    page.click("nav >> text=History")
    page.wait_for_selector("#history-chart svg.history-chart")


def test_the_history_chart_adds_up_to_the_record_minute_by_minute(page, queue, logs, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv("FLAKY_DIR", str(tmp_path))
    board = start_dashboard(queue, tmp_path, logs)
    worker = start_worker("--queue", queue, "--handler",
                          "tests.task_page_handlers:flaky_or_doomed", "--in-process",
                          "--max-retries", "1", "--retry-delay", "0.1", "--name", "w1",
                          log_dir=logs, out=tmp_path / "w.out")
    rows = ([f"fine {n}" for n in range(FINE)] + [f"flaky {n}" for n in range(FLAKY)]
            + [f"doomed {n}" for n in range(DOOMED)])
    emitted = run_script("emitter_of_tasks.py", "--queue", queue, "--file",
                         str(write_csv(tmp_path / "t.csv", rows)), log_dir=logs)
    assert emitted.returncode == 0, emitted.stdout + emitted.stderr
    run = re.search(r"\(run (\S+)\)", emitted.stdout)[1]
    wait_for(lambda: (queue_state(QueueSpec(queue).dead_name) or (0, 0))[0] == DOOMED,
             timeout=120, what="every doomed task dead")
    worker.terminate()
    worker.wait(timeout=30)
    wait_for(lambda: f'"dead": {DOOMED}'.encode() in board.request(
        "GET", f"/runs/{run}/tasks.json")[2], timeout=60, what="the dashboard to read the run")
    recorded = per_minute_in_record(queue)
    totals = sum(recorded.values(), Counter())
    assert totals["done"] == FINE + FLAKY and totals["dead"] == DOOMED, totals
    assert totals["failed"] >= FLAKY + DOOMED, totals  # each tried again at least once

    try:
        open_history(page, board)
        chart = chart_of(page)
        assert per_minute_in_chart(chart) == recorded
        assert chart.get("data-minutes") == "60"
        assert {name: int(chart.get(f"data-{name}")) for name in OUTCOMES} == \
            {name: totals[name] for name in OUTCOMES}
        desc = chart.find(f"{SVG}desc").text
        assert f"{FINE + FLAKY} done" in desc and f"{DOOMED} dead" in desc, desc

        # The depth, sampled by the dashboard: the dead ones are in <queue>.dead, none ready.
        def dead_sampled() -> bool:
            page.reload()
            page.wait_for_selector("#history-chart svg.history-chart")
            samples = depth_samples(chart_of(page))
            return bool(samples) and samples[-1] == {"ready": 0, "retrying": 0, "dead": DOOMED}

        wait_for(dead_sampled, timeout=30, interval=1, what="the depth sampled")

        # Another window: the same minutes in a longer chart.
        page.click("#history-windows >> text=24h")
        page.wait_for_selector("#history-chart[data-window='24h'] svg")
        longer = chart_of(page)
        assert longer.get("data-minutes") == "1440"
        assert per_minute_in_chart(longer) == recorded
    finally:
        board.stop()

    # A restart: the attempts come back from the record; the depth starts again from now.
    again = start_dashboard(queue, tmp_path, logs)
    try:
        wait_for(lambda: f'"dead": {DOOMED}'.encode() in again.request(
            "GET", f"/runs/{run}/tasks.json")[2], timeout=60, what="the record read again")
        open_history(page, again)
        assert per_minute_in_chart(chart_of(page)) == recorded
        assert "goes back only to when the dashboard started" in page.inner_text("main")
    finally:
        again.stop()


def test_the_chart_is_drawn_again_by_its_script(page, queue, logs, tmp_path):
    """history.js fetches the chart every 30 s (the page's clock, run forward here)."""
    board = start_dashboard(queue, tmp_path, logs)
    try:
        page.clock.install()
        page.goto(board.address)
        page.goto(f"{board.base}/history?window=6h")
        page.wait_for_selector("#history-chart svg.history-chart")
        page.clock.run_for(31_000)
        page.wait_for_selector("#history-chart[data-refreshed='1'] svg.history-chart")
        assert chart_of(page).get("data-minutes") == "360"
        status, headers, body = board.request("GET", "/history.svg?window=6h")
        assert status == 200 and headers["content-type"].startswith("image/svg+xml")
        ET.fromstring(body)
    finally:
        board.stop()


# --- the aggregate, without a broker ------------------------------------------------------------
@pytest.mark.fast
def test_the_minutes_ring_rolls_over_and_drops_what_is_older_than_a_day():
    from taskqueue.web.minutes import MinuteHistory, MinuteRing

    ring = MinuteRing(("done", "failed"), minutes=3)
    ring.add(600.0, "done")
    ring.add(659.9, "done")
    ring.add(660.0, "failed")
    ring.add(1.0, "nonsense")  # not a series: nothing
    assert [(m.start, m.values) for m in ring.window(719.0, 3)] == [
        (540.0, None), (600.0, {"done": 2, "failed": 0}), (660.0, {"done": 0, "failed": 1})]
    ring.add(780.0, "done")  # minute 13 takes minute 10's bucket
    assert [m.values for m in ring.window(780.0, 3)] == [
        {"done": 0, "failed": 1}, None, {"done": 1, "failed": 0}]
    ring.add(600.0, "done")  # older than the ring keeps: dropped, not counted in minute 13
    assert ring.window(780.0, 1)[0].values == {"done": 1, "failed": 0}
    assert len(ring.window(780.0, 10)) == 3  # never more than the ring holds
    for nonsense in (float("nan"), float("inf"), 1e300, -5.0):  # a stranger's record's time
        ring.add(nonsense, "done")
    assert [m.values for m in ring.window(780.0, 3)] == [
        {"done": 0, "failed": 1}, None, {"done": 1, "failed": 0}]

    history = MinuteHistory(minutes=5)
    history.sample(120.0, 3, None, 0)
    assert history.sampled_since == 120.0
    assert [m.values for m in history.depth.window(179.0, 2)] == [
        None, {"ready": 3, "retrying": -1, "dead": 0}]
    history.sample(130.0, 1, 2, 0)  # the minute's last sample is kept
    assert history.depth.window(179.0, 1)[0].values == {"ready": 1, "retrying": 2, "dead": 0}


@pytest.mark.fast
def test_a_million_records_keep_the_aggregate_the_same_size():
    from taskqueue.web.totals import RecordTotals

    totals = RecordTotals()
    history = totals.minutes
    sizes = (history.counts.size(), history.depth.size())
    start, gap, count = 1.7e9, 0.3, 1_000_000  # 3.5 days of records
    for n in range(count):
        totals.add({"kind": "task", "id": f"r{n}", "run_id": "big",
                    "outcome": "failed" if n % 10 == 0 else "done",
                    "finished": start + n * gap, "seconds": 0.1})
        if n % 200 == 0:
            history.sample(start + n * gap, n % 7, 0, n % 3)
    assert (history.counts.size(), history.depth.size()) == sizes
    last = start + (count - 1) * gap
    day = history.counts.window(last, 24 * 60)
    assert len(day) == 24 * 60 and all(m.values is not None for m in day)
    in_day = sum(1 for n in range(count) if start + n * gap >= day[0].start)
    assert sum(sum(m.values.values()) for m in day if m.values) == in_day
    assert totals.outcomes["done"] + totals.outcomes["failed"] == count


@pytest.mark.fast
def test_the_chart_is_valid_xml_with_its_figures_in_words():
    from taskqueue.views.chart import history_svg
    from taskqueue.web.minutes import MinuteHistory

    history = MinuteHistory(minutes=60)
    for n in range(30):
        history.finished(6000.0 + n * 20, "done" if n % 4 else "dead")
    history.sample(6000.0, 12, 1, 0)
    history.sample(6120.0, 4, 0, 2)
    svg = history_svg([(m.start, m.values) for m in history.counts.window(6599.0, 60)],
                      [(m.start, m.values) for m in history.depth.window(6599.0, 60)],
                      "queue a\x00b\u202e: the last 1h")
    chart = ET.fromstring(svg)
    assert chart.get("role") == "img" and chart.get("data-done") == "22"
    assert chart.get("data-dead") == "8"
    assert "22 done" in chart.find(f"{SVG}desc").text
    assert "a\\x00b" in chart.find(f"{SVG}title").text
    assert len(depth_samples(chart)) == 2
    assert len([g for g in chart.iter(f"{SVG}g") if g.get("class") == "minute"]) == 10
