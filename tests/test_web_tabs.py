"""The live page in many tabs and when things fail (issue 30, items 3 and 7), in headless
chromium against a real ``task_report.py --serve``, real workers and a real broker.

* Twelve tabs of one browser (a browser opens at most 6 connections to a host) all follow a
  run live, under a prefix (``--public-url``), on one stream: the dashboard's own gauge of open
  streams says 1 for one tab and 1 for twelve; the Runs page still loads in that browser.
* A broker that stops (a throwaway node: the machine's broker is never stopped): the page says
  the broker is unreachable, greys its figures, keeps the time they were true (the workers are
  not turned "gone"), disables its buttons; the node back, the page recovers without a reload.
* A toast goes away by itself.
"""

from __future__ import annotations

import subprocess
import time

from playwright.sync_api import Page

from taskqueue.web.feed import GONE_AFTER
from tests.brokers import ThrowawayBroker, free_port
from tests.dashboard import Dashboard, dashboard_and_worker, start_dashboard
from tests.helpers import start_worker, wait_for, write_csv
from tests.test_web_browser import confirm, emit, text_of

TABS = 12


def streams_open(board: Dashboard, prefix: str = "") -> float:
    """The dashboard's own count of open live streams (/metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    _status, _headers, body = board.request("GET", f"{prefix}/metrics")
    for family in text_string_to_metric_families(body.decode()):
        if family.name == "taskqueue_dashboard_live_pages":
            return family.samples[0].value
    raise AssertionError("no taskqueue_dashboard_live_pages in /metrics")


def tcp_connections(port: int) -> int:
    """Established TCP connections to the dashboard's port (ss), for the figures."""
    listed = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
                            capture_output=True, text=True, check=True).stdout
    return len(listed.splitlines())


def test_twelve_tabs_of_one_browser_all_follow_a_run_on_one_stream_under_a_prefix(
        browser, queue, logs, tmp_path):
    port = free_port()
    board = start_dashboard(queue, tmp_path, logs, "--bind", f"127.0.0.1:{port}",
                            "--public-url", f"http://127.0.0.1:{port}/tq/")
    board.port = port  # start_dashboard chose another; ours came last on its command line
    home = f"{board.base}/tq/"
    context = browser.new_context()
    try:
        first = context.new_page()
        first.goto(f"{home}?token={board.token}")  # the session cookie, for every tab
        first.wait_for_selector("#connection.ok")
        wait_for(lambda: streams_open(board, "/tq") == 1, what="one tab's stream")
        one_tab = (streams_open(board, "/tq"), tcp_connections(port))
        tabs = [first]
        for _ in range(TABS - 1):
            tab = context.new_page()
            tab.goto(home)
            tabs.append(tab)
        for tab in tabs:
            tab.wait_for_selector("#connection.ok")
        twelve_tabs = (streams_open(board, "/tq"), tcp_connections(port))
        print(f"streams, TCP connections: 1 tab {one_tab}, {TABS} tabs {twelve_tabs}")
        assert twelve_tabs[0] == one_tab[0] == 1, "one stream for the browser, however many tabs"

        worker = start_worker("--queue", queue, "--handler", "tests.handlers:shout",
                              log_dir=logs, out=tmp_path / "w.out")
        run = emit(queue, logs, write_csv(tmp_path / "t.csv", [f"job {n}." for n in range(30)]))
        for tab in tabs:  # every tab follows the run to its end, without a reload
            wait_for(lambda tab=tab: text_of(tab, "#r-done") == "30 / 30", timeout=90,
                     what="every tab to show the run done")
            assert text_of(tab, "#run-link") == run

        runs = context.new_page()  # the browser has connections left for other pages
        runs.goto(f"{home}runs")
        runs.wait_for_selector(f"text={run}")
        worker.terminate()
        worker.wait(timeout=30)
    finally:
        context.close()
    board.stop()


def buttons_disabled(page: Page) -> list[bool]:
    return page.eval_on_selector_all("main button[data-action]", "all => all.map(b => b.disabled)")


def test_a_broker_that_stops_is_said_figures_greyed_buttons_off_and_the_page_recovers(
        browser, queue, logs, tmp_path):
    node = ThrowawayBroker().start()
    context = browser.new_context()
    try:
        board, worker = dashboard_and_worker(node.url, queue, tmp_path, logs)
        page = context.new_page()
        page.goto(board.address)
        page.evaluate("window.notReloaded = true")
        page.wait_for_selector("#workers tr.worker.idle[data-worker=w1]", timeout=60_000)
        page.wait_for_selector("#connection.ok")
        assert not any(buttons_disabled(page))

        node.stop_app()
        page.wait_for_selector("#connection.error:has-text('broker unreachable')")
        page.wait_for_selector("main.stale")
        assert all(buttons_disabled(page)), "no button that would fail"
        updated = text_of(page, "#updated")
        page.screenshot(path=str(tmp_path / "broker-down.png"), full_page=True)
        assert f"as of {updated}" in text_of(page, "#connection"), text_of(page, "#connection")
        time.sleep(GONE_AFTER + 2)  # long enough for a worker unheard from to show as gone
        assert text_of(page, "#updated") == updated, "the figures keep the time they were true"
        assert page.locator("#workers tr.worker.gone").count() == 0, \
            "a worker is not called gone because the broker is"
        assert "broker unreachable" in text_of(page, "#connection")

        node.start_app()
        page.wait_for_selector("#connection.ok", timeout=60_000)
        page.wait_for_selector("main:not(.stale)")
        assert not any(buttons_disabled(page)), "the buttons work again"
        wait_for(lambda: text_of(page, "#updated") != updated, what="the time moves again")
        assert page.evaluate("window.notReloaded") is True, "recovered without a reload"
        worker.terminate()
        worker.wait(timeout=30)
        board.stop()
    finally:
        context.close()
        node.cleanup()


def test_a_toast_goes_away_by_itself(browser, queue, logs, tmp_path):
    board = start_dashboard(queue, tmp_path, logs)
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(board.address)
        page.wait_for_selector("#connection.ok")
        confirm(page, "button[data-action=pause]", "Pause 0 worker(s)?")
        page.wait_for_selector("#toast.ok:has-text('paused queue')")
        page.wait_for_selector("#toast", state="hidden", timeout=30_000)
    finally:
        context.close()
    board.stop()
