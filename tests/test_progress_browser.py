"""A task's progress on the web view's live page, in a real browser (Debian's chromium,
headless, Playwright) against a real ``task_report.py --serve``, a real worker and the real
broker: the busy slot shows a bar, the percentage and the note, which stays text (its HTML
not run, its control character a stand-in, isolated in a bdi)."""

from __future__ import annotations

import pytest
from playwright.sync_api import sync_playwright

from tests.dashboard import CHROMIUM_ARGS, ensure_chromium, start_dashboard
from tests.helpers import run_script, start_worker, wait_for


@pytest.fixture
def page():
    executable = ensure_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        yield context.new_page()
        browser.close()


def test_the_live_page_shows_a_busy_slots_progress_as_text(page, queue, logs, tmp_path):
    board = start_dashboard(queue, tmp_path, logs)
    release = tmp_path / "release"
    emitted = run_script("emitter_of_tasks.py", "--queue", queue, "--message", str(release),
                         log_dir=logs)
    assert emitted.returncode == 0, emitted.stdout + emitted.stderr
    out = tmp_path / "worker.out"
    worker = start_worker("--queue", queue, "--handler", "tests.progress_handlers:markup_then_wait",
                          "--exit-when-idle", "1.5", log_dir=logs, out=out)
    try:
        page.goto(board.address)
        shown = page.locator("#workers tr.slot .task-progress")
        wait_for(lambda: shown.count() == 1, timeout=60, what="the slot's progress on the page")
        assert shown.get_attribute("data-fraction") == "0.65"
        assert page.locator("#workers tr.slot .task-progress progress").evaluate(
            "bar => bar.value") == pytest.approx(0.65)
        text = shown.inner_text()
        assert "65%" in text and '<img src=x onerror="window.pwned=1">' in text, text
        assert shown.locator("bdi .ctl").first.inner_text() == "\\x1b", "a stand-in"
        assert shown.locator("img").count() == 0 and page.evaluate("window.pwned") is None
    finally:
        release.touch()
    assert worker.wait(timeout=60) == 0, out.read_text()
    wait_for(lambda: page.locator("#workers tr.slot .task-progress").count() == 0, timeout=60,
             what="no progress once the slot is idle")
