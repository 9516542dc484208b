"""Several queues from one dashboard, and a run's or task's page when the broker goes away
(issue 30, items 6 and 7), in headless chromium through the printed address of a real
``task_report.py --serve``, real workers and a real broker.

* ``--serve --queue A --queue B`` (B's name needs quoting in an address: a space, ``#``,
  ``?``, ``%``, ``&``, ``<``, a non-ASCII letter): the printed address is the overview of
  both; the header's switcher reaches each queue's live page, each with its own run's
  figures (3 tasks on A, 5 on B); Pause on B's page pauses B only (B's control stream has the
  command, A's has none, A's worker goes on); the overview lists both with their depths (B's
  tasks held while paused), workers and attempts done in the last minute.
* A run's page and a task's page, the broker stopped (a throwaway node: the machine's broker
  is never stopped): they say so, grey their figures, keep the time they were true, disable
  their buttons; the node back, they are live again without a reload (the run's timeline
  picture read again); the dead tasks' page (the server's) reloads itself.
* A queue named with a right-to-left override, ``<script>`` and quotes: its name is text
  everywhere, its direction its own (the switcher's next link stays to its right), the tab's
  title without the override; ``/q/<name>`` without its slash reaches the queue's page.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from pathlib import Path
from urllib.parse import quote

from playwright.sync_api import Page

from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.results.reader import RecordReader
from taskqueue.web.board import Board, make_board
from taskqueue.wire.record import kind_of
from tests.brokers import ThrowawayBroker
from tests.dashboard import dashboard_and_worker, start_dashboard
from tests.helpers import MAIN_URL, delete_queues, run_script, start_worker, wait_for, write_csv
from tests.test_web_browser import confirm, emit, text_of
from tests.test_web_http import control_commands
from tests.test_web_tabs import buttons_disabled

OVERVIEW = "() => fetch(`${ROOT}overview.json`).then((answer) => answer.json())"


def done_times(queue: str) -> list[float]:
    """When each done attempt of *queue* finished, as recorded (the workers' clock)."""
    reader = RecordReader(BrokerSettings([MAIN_URL]), QueueSpec(queue), idle=1.0)
    return [record["finished"] for record in reader.records()
            if kind_of(record) == "task" and record.get("outcome", "done") == "done"]


def in_last_minute(times: list[float], now: float) -> int:
    """The attempts the overview counts at *now*: finished in the 60 one-second buckets that
    end with *now*'s second."""
    return sum(1 for t in times if int(now) - 59 <= int(t) <= int(now))


def made_board(name: str, tmp_path: Path) -> Board:
    """A queue's board, not started (no broker asked): its pages still render."""
    return make_board(BrokerSettings([MAIN_URL]), QueueSpec(name), reports_dir=tmp_path,
                      interval=1.0, log=logging.getLogger("test"), root=f"/q/{name}/")


def as_of(page: Page) -> str:
    """The time a page says its figures are of (while they are not current)."""
    return re.search(r"the figures are as of (.+?);", text_of(page, "#connection"))[1]


def overview_row(page: Page, name: str) -> dict[str, str]:
    row = page.locator("#overview tr.queue-row").filter(has=page.locator(
        "a.live-link", has_text=name))
    return {cell.get_attribute("data-figure"): cell.inner_text()
            for cell in row.locator("td[data-figure]").all()}


def test_two_queues_from_one_server_each_its_own_pages_buttons_and_line_in_the_overview(
        page, queue, logs, tmp_path):
    a = queue
    b = f"test.q b ü#?%&<i>.{uuid.uuid4().hex[:8]}"
    board = start_dashboard(a, tmp_path, logs, "--queue", b)
    try:
        assert f"dashboard of queues {a!r}, {b!r}:" in board.out.read_text()
        workers = {name: start_worker("--queue", name, "--name", f"w-{n}", "--handler",
                                      "tests.handlers:shout", log_dir=logs,
                                      out=tmp_path / f"w{n}.out")
                   for n, name in enumerate((a, b))}
        emit(a, logs, write_csv(tmp_path / "a.csv", [f"a{n}" for n in range(3)]))
        emit(b, logs, write_csv(tmp_path / "b.csv", [f"b{n}" for n in range(5)]))

        page.goto(board.address)  # the overview: the printed address
        page.wait_for_selector("#overview tr.queue-row >> nth=1")
        assert page.locator("#queues a.queue-link").all_inner_texts() == [a, b]

        page.locator("#queues").get_by_role("link", name=a, exact=True).click()
        page.wait_for_selector("#connection.ok")
        assert page.url == f"{board.base}/q/{a}/"
        wait_for(lambda: text_of(page, "#r-done") == "3 / 3", timeout=60, what="A's run done")

        page.locator("#queues a.queue-link", has_text="ü").click()
        page.wait_for_selector("#connection.ok")
        assert page.url == f"{board.base}/q/{quote(b, safe='')}/"
        assert text_of(page, "header .queue") == b and page.title().startswith(f"live · {b} ·")
        wait_for(lambda: text_of(page, "#r-done") == "5 / 5", timeout=60, what="B's run done")
        page.wait_for_selector("#workers tr.worker.idle[data-worker=w-1]")
        assert page.locator("#workers tr.worker").count() == 1, "B's worker only"

        confirm(page, "button[data-action=pause]", "Pause 1 worker(s)?")
        page.wait_for_selector("#toast.ok:has-text('paused queue')")
        assert f"paused queue {b!r}" in text_of(page, "#toast")
        assert [c["command"] for c in control_commands(b)] == ["pause"]
        assert control_commands(a) == [], "A's control stream got nothing"
        wait_for(lambda: "paused" in (tmp_path / "w1.out").read_text(), what="B's worker paused")
        emit(b, logs, write_csv(tmp_path / "b2.csv", [f"held b{n}" for n in range(4)]))
        wait_for(lambda: text_of(page, "#q-ready") == "4", timeout=30, what="B's tasks held")
        more_a = emit(a, logs, write_csv(tmp_path / "a2.csv", ["a again"]))

        page.click("#queues >> text=All queues")
        page.wait_for_selector("#connection.ok")
        page.goto(f"{board.base}/q/{quote(a, safe='')}/")  # A, by its quoted address too
        wait_for(lambda: text_of(page, "#run-link") == more_a and
                 text_of(page, "#r-done") == "1 / 1", timeout=60, what="A's worker went on")
        assert page.locator("#paused").is_hidden(), "A is not paused"

        page.goto(f"{board.base}/")
        wait_for(lambda: overview_row(page, b)["ready"] == "4", timeout=30,
                 what="the overview's depths")
        shown = {name: overview_row(page, name) for name in (a, b)}
        assert {name: (row["ready"], row["retrying"], row["dead"], row["workers"])
                for name, row in shown.items()} == {a: ("0", "0", "0", "1 (0 busy)"),
                                                     b: ("4", "0", "0", "1 (0 busy)")}, shown
        assert shown[a]["state"] == "live" and shown[b]["state"] == "paused", shown
        data = page.evaluate(OVERVIEW)
        for row in data["queues"]:
            expected = in_last_minute(done_times(row["name"]), data["updated"])
            assert row["done_per_minute"] == expected, (row, expected)
            assert row["failed_per_minute"] == 0
        page.locator("#overview a.live-link", has_text="ü").click()
        page.wait_for_selector("#connection.ok")
        assert text_of(page, "#q-ready") == "4"
        for worker in workers.values():
            worker.terminate()
            worker.wait(timeout=30)
    finally:
        board.stop()
        delete_queues(b)


def test_a_hostile_queue_name_stays_text_in_its_place_and_its_address_needs_no_slash(
        page, queue, logs, tmp_path):
    hostile = f"test.q \u202eevil <script>alert(1)</script> '\"<i>.{uuid.uuid4().hex[:8]}"
    board = start_dashboard(hostile, tmp_path, logs, "--queue", queue)
    try:
        page.goto(board.address)
        page.wait_for_selector("#overview tr.queue-row >> nth=1")
        links = page.locator("#queues a").all()
        assert [link.inner_text() for link in links] == ["All queues", hostile, queue]
        boxes = [link.bounding_box() for link in links]
        for before, after in zip(boxes, boxes[1:]):
            assert after["x"] >= before["x"] + before["width"], ("in order, left to right",
                                                                boxes)
        assert page.locator("#overview tr.queue-row").evaluate_all(
            "rows => rows.map((row) => row.dataset.queue)") == [hostile, queue]
        assert page.locator("body script, body i").count() == 0, "no element of the name's"

        address = f"{board.base}/q/{quote(hostile, safe='')}"
        page.goto(address)  # without its slash
        page.wait_for_selector("#connection.ok")
        assert page.url == address + "/"
        assert text_of(page, "header .queue") == hostile
        assert page.locator("header .queue > bdi").count() == 1
        assert page.title() == f"live · {hostile.replace(chr(0x202e), '')} · taskqueue"
        assert page.locator("body script, body i").count() == 0
    finally:
        board.stop()
        delete_queues(hostile)


def test_a_hostile_queue_name_is_text_isolated_in_the_header_and_plain_in_the_title(tmp_path):
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import tornado.httpclient
    import tornado.httpserver
    import tornado.netutil

    from taskqueue.web.access import Access
    from taskqueue.web.board import queue_root
    from taskqueue.web.routes import make_app

    hostile = "evil \u202e<script>x</script> '\"\x1b"
    boards = [made_board("a", tmp_path), made_board(hostile, tmp_path)]
    boards[1].root = queue_root("/", hostile)
    app = make_app(boards=boards, access=Access(token="t"), registry=boards[0].registry,
                   cookie_secret="s", log=logging.getLogger("test"))

    async def pages() -> list[str]:
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        server = tornado.httpserver.HTTPServer(app)
        server.add_sockets(sockets)
        client = tornado.httpclient.AsyncHTTPClient()
        base = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        try:
            return [(await client.fetch(base + path, headers={"Authorization": "Bearer t"}))
                    .body.decode() for path in ("/", boards[1].root)]
        finally:
            server.stop()

    shown = "<bdi>evil \u202e&lt;script&gt;x&lt;/script&gt; &#x27;&quot;" \
            '<span class="ctl" title="U+001B">\\x1b</span></bdi>'
    with ThreadPoolExecutor(1) as thread:  # a loop of its own (the browser's runs here)
        overview, own = thread.submit(asyncio.run, pages()).result()
    for html in (overview, own):
        assert "<script>x" not in html
        assert f">{shown}</a>" in html, "the switcher's link"
    assert f'<a class="live-link" href="{boards[1].root}">{shown}</a>' in overview
    assert f'<span class="queue">{shown}</span>' in own
    title = own[own.index("<title>"):own.index("</title>")]
    assert title == ("<title>live · evil &lt;script&gt;x&lt;/script&gt; &#x27;&quot;\\x1b"
                     " · taskqueue")
    for board in boards:
        board.stop_threads()


def test_a_run_and_a_task_page_greyed_buttons_off_while_the_broker_is_down_then_live(
        browser, queue, logs, tmp_path):
    node = ThrowawayBroker().start()
    context = browser.new_context()
    try:
        board, worker = dashboard_and_worker(node.url, queue, tmp_path, logs)
        emitted = run_script("emitter_of_tasks.py", "--url", node.url, "--queue", queue,
                             "--file", str(write_csv(tmp_path / "t.csv", ["one", "two"])),
                             log_dir=logs)
        assert emitted.returncode == 0, emitted.stdout + emitted.stderr
        run_page = context.new_page()
        run_page.goto(board.address)
        wait_for(lambda: text_of(run_page, "#r-done") == "2 / 2", timeout=60, what="the run")
        run_page.click("#run-link")
        run_page.wait_for_selector("#tasks tbody tr.task")
        task_page = context.new_page()
        task_page.goto(board.base + run_page.locator("#tasks a.task-link").first
                       .get_attribute("href"))
        task_page.wait_for_selector("#task-attempts tbody tr")
        dead_page = context.new_page()
        dead_page.goto(f"{board.base}/dead")
        pages = (run_page, task_page, dead_page)
        for shown in pages:
            shown.wait_for_selector("#connection.ok")
            shown.evaluate("window.notReloaded = true")
        timeline = run_page.get_attribute("#timeline", "src")
        assert not any(buttons_disabled(run_page))

        node.stop_app()
        for shown in pages:
            shown.wait_for_selector("#connection.error:has-text('broker unreachable')")
            shown.wait_for_selector("main.stale")
            assert "the figures are as of" in text_of(shown, "#connection")
        assert buttons_disabled(run_page) and all(buttons_disabled(run_page)), \
            "Cancel run disabled: it would fail"
        assert run_page.evaluate("getComputedStyle(document.querySelector('#tasks')).opacity") \
            != "1", "the table greyed"
        said = as_of(run_page)
        time.sleep(3)  # more snapshots come while the broker is down: the time stays
        assert as_of(run_page) == said, "the time the figures were true, kept"

        node.start_app()
        for shown in pages:
            shown.wait_for_selector("#connection.ok", timeout=60_000)
            shown.wait_for_selector("main:not(.stale)")
        for shown in (run_page, task_page):
            assert shown.evaluate("window.notReloaded") is True, "recovered without a reload"
        dead_page.wait_for_function("() => window.notReloaded === undefined")  # read again
        dead_page.wait_for_selector("#connection.ok")
        assert not any(buttons_disabled(dead_page))
        run_page.wait_for_function(
            "() => { const picture = document.getElementById('timeline');"
            f"  return picture.getAttribute('src') !== {json.dumps(timeline)}"
            "    && picture.complete && picture.naturalWidth > 0; }")  # the picture read again
        assert not any(buttons_disabled(run_page)), "the buttons work again"
        worker.terminate()
        worker.wait(timeout=30)
        board.stop()
    finally:
        context.close()
        node.cleanup()
