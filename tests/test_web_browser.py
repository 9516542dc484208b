"""The web view in a real browser (issue 23): Debian's chromium, headless, driven by
Playwright, against a real ``task_report.py --serve``, real workers and the real broker. The
page follows a run live without a reload, a click on Pause pauses the workers, a killed worker
shows as gone, a task with HTML in it stays text, a form posted from another origin changes
nothing, and a run's page pages, filters, shows attempts and downloads its CSV."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest
from playwright.sync_api import Page

from tests.dashboard import start_dashboard
from tests.helpers import run_script, start_worker, wait_for, write_csv
from tests.test_web_http import control_commands

HOSTILE = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2"> boom.'


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    opened = context.new_page()
    yield opened
    context.close()


def emit(queue: str, logs, path: Path) -> str:
    result = run_script("emitter_of_tasks.py", "--queue", queue, "--file", str(path),
                        log_dir=logs)
    assert result.returncode == 0, result.stdout + result.stderr
    import re

    return re.search(r"\(run (\S+)\)", result.stdout)[1]


def text_of(page: Page, selector: str) -> str:
    return page.locator(selector).inner_text()


def confirm(page: Page, action_selector: str, expected_question: str) -> None:
    page.click(action_selector)
    page.wait_for_selector("#confirm[open]")
    assert text_of(page, "#confirm-question") == expected_question
    page.click("#confirm-yes")


def test_the_page_follows_a_run_live_pauses_workers_and_shows_a_killed_one_gone(
        page, queue, logs, tmp_path):
    board = start_dashboard(queue, tmp_path, logs)
    page.goto(board.address)
    assert page.url == board.base + "/", "the token left the address bar"
    page.evaluate("window.notReloaded = true")
    outs = [tmp_path / "w1.out", tmp_path / "w2.out"]
    workers = [start_worker("--queue", queue, "--name", f"w{n}",
                            "--handler", "tests.handlers:dots_fail_on_boom", "--max-retries", "0",
                            log_dir=logs, out=out) for n, out in enumerate(outs, 1)]
    wait_for(lambda: page.locator("#workers tr.worker").count() == 2, what="both workers shown")
    rows = [f"task {n}" + "." * 3 for n in range(40)] + [HOSTILE]
    run = emit(queue, logs, write_csv(tmp_path / "t.csv", rows))
    seen = set()
    wait_for(lambda: seen.add(text_of(page, "#r-done")) or text_of(page, "#r-done") == "40 / 41",
             timeout=90, what="the page to show the run done")
    assert len(seen) >= 3, f"the count moved on the page: {sorted(seen)}"
    assert page.evaluate("window.notReloaded") is True, "no reload"
    assert text_of(page, "#run-link") == run
    page.wait_for_selector("#failures li:has-text('boom')")
    assert HOSTILE in text_of(page, "#failures"), "the task's HTML is shown as text"
    assert page.evaluate("window.pwned") is None, "and nothing in it ran"
    page.screenshot(path=str(tmp_path / "live.png"), full_page=True)  # docs/img/ has one

    confirm(page, "button[data-action=pause]", "Pause 2 worker(s)?")
    page.wait_for_selector("#toast.ok:has-text('paused queue')")
    page.wait_for_selector("#paused:not([hidden])")
    wait_for(lambda: all("paused" in out.read_text() for out in outs), what="workers paused")
    more = emit(queue, logs, write_csv(tmp_path / "more.csv", ["held 1.", "held 2."]))
    wait_for(lambda: text_of(page, "#q-ready") == "2", what="two waiting, nobody taking them")
    confirm(page, "button[data-action=resume]", "Resume 2 worker(s)?")
    wait_for(lambda: text_of(page, "#q-ready") == "0" and text_of(page, "#run-link") == more,
             timeout=60, what="the held tasks taken after resume")

    workers[0].kill()
    page.wait_for_selector("#workers tr.worker.gone[data-worker=w1]", timeout=30_000)
    assert "gone" in text_of(page, "#workers tr[data-worker=w1]")
    workers[1].terminate()
    workers[1].wait(timeout=30)
    said = board.stop()
    assert "dashboard stopped:" in said


def live_pages(board) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    _status, _headers, body = board.request("GET", "/metrics")
    for family in text_string_to_metric_families(body.decode()):
        if family.name == "taskqueue_dashboard_live_pages":
            return family.samples[0].value
    raise AssertionError("no taskqueue_dashboard_live_pages in /metrics")


def test_a_hidden_tab_stops_its_updates_and_starts_again_when_shown(page, queue, logs,
                                                                   tmp_path):
    board = start_dashboard(queue, tmp_path, logs)
    page.goto(board.address)
    page.wait_for_selector("#connection.ok")
    wait_for(lambda: live_pages(board) == 1, what="the page's stream open")
    hide = ("hidden => { Object.defineProperty(document, 'hidden', {value: hidden, "
            "configurable: true}); document.dispatchEvent(new Event('visibilitychange')); }")
    page.evaluate(hide, True)
    wait_for(lambda: live_pages(board) == 0, what="the hidden tab's stream closed")
    updated = text_of(page, "#updated")
    assert text_of(page, "#connection") == "paused while the tab is hidden"
    page.evaluate(hide, False)
    wait_for(lambda: live_pages(board) == 1, what="the stream open again")
    wait_for(lambda: text_of(page, "#updated") != updated, what="updates again")
    board.stop()


class Evil(http.server.BaseHTTPRequestHandler):
    """Another site, with a form that posts to the dashboard as soon as it is opened."""

    target = ""
    ticket = ""

    def do_GET(self) -> None:
        body = (f'<form id=f method=post action="{self.target}/control">'
                f'<input name=ticket value="{self.ticket}"></form>'
                "<script>document.getElementById('f').submit()</script>").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_a_form_posted_from_another_origin_changes_nothing(page, queue, logs, tmp_path):
    board = start_dashboard(queue, tmp_path, logs)
    page.goto(board.address)  # the browser holds a session with the dashboard
    Evil.target = board.base
    Evil.ticket = board.json("/control/preview.json?action=pause")["ticket"]
    evil = http.server.HTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        with page.expect_response(f"{board.base}/control") as posted:
            page.goto(f"http://127.0.0.1:{evil.server_port}/")
        assert posted.value.status in (401, 403), posted.value.status
    finally:
        evil.shutdown()
    assert control_commands(queue) == [], "no command was given"
    page.goto(board.base + "/")
    confirm(page, "button[data-action=pause]", "Pause 0 worker(s)?")
    page.wait_for_selector("#toast.ok:has-text('paused queue')")
    assert [c["command"] for c in control_commands(queue)] == ["pause"], "our own page can"
    board.stop()


def test_a_runs_page_pages_filters_shows_attempts_and_downloads_its_csv(page, queue, logs,
                                                                      tmp_path):
    rows = [f"job {n}." for n in range(120)] + ["job boom 1.", "job boom 2."]
    run = emit(queue, logs, write_csv(tmp_path / "t.csv", rows))
    worker = start_worker("--queue", queue, "--handler", "tests.handlers:fail_on_boom",
                          "--max-retries", "1", "--retry-delay", "0.1", "--exit-when-idle",
                          "2", log_dir=logs, out=tmp_path / "w.out")
    assert worker.wait(timeout=120) == 0
    board = start_dashboard(queue, tmp_path, logs)
    page.goto(board.address)
    page.click("header a[href='/runs']")
    page.click(f"#runs a:has-text('{run}')")
    page.wait_for_selector("#tasks tbody tr")
    assert text_of(page, "#run-counts").startswith("122 tasks: 120 done, 2 dead")
    assert page.locator("#tasks tbody tr").count() == 50
    assert "page 1 of 3 (122 matching)" in text_of(page, "#page-info")
    page.click("#next")
    page.wait_for_selector("#page-info:has-text('page 2 of 3')")
    page.select_option("#filter select[name=outcome]", "dead")
    page.click("#filter button")
    page.wait_for_selector("#page-info:has-text('(2 matching)')")
    page.locator("#tasks tbody tr").first.click()
    page.wait_for_selector("#attempts:not([hidden]) tbody tr")
    attempts = page.locator("#attempts tbody tr")
    assert attempts.count() == 2, "the first attempt failed, the retry died"
    assert "boom" in attempts.nth(1).inner_text()
    page.fill("#filter input[name=q]", "job 11")
    page.select_option("#filter select[name=outcome]", "")
    page.click("#filter button")
    page.wait_for_selector("#page-info:has-text('(11 matching)')")  # 11, 110-119
    page.screenshot(path=str(tmp_path / "run.png"), full_page=True)
    with page.expect_download() as download:
        page.click("#csv-link")
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines[0].startswith("row,task,worker") and len(lines) == 1 + 122
    page.click("header a[href='/dead']")
    assert text_of(page, "#dead-of-run") == "2"
    assert page.locator(".reason").count() == 1, "one reason, the task's text aside"
    assert "cannot handle '…'" in text_of(page, ".reason-text")
    piece = page.get_attribute(".reason button[data-action=requeue-dead]", "data-reason")
    confirm(page, ".reason button[data-action=requeue-dead]",
            f"Requeue 2 dead task(s) of run {run} whose reason contains {piece!r}?")
    page.wait_for_selector("#toast.ok:has-text('2 of the 2 dead tasks moved back')")
    board.stop()
