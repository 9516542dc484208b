"""The dashboard's /metrics and its honest answers (issue 30, items 7 and 8), against a real
``task_report.py --serve`` and the real broker: a counter of tasks published, cancelled
attempts kept out of the duration histogram, every name and help text by the Prometheus
conventions (read by prometheus_client's own parser); an unknown run answers 404 with a page
of its own (in headless chromium too), and every response carries the security headers."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import sync_playwright
from prometheus_client.parser import text_string_to_metric_families

from tests.dashboard import CHROMIUM_ARGS, ensure_chromium, start_dashboard
from tests.helpers import consumers, run_script, start_worker, wait_for, write_csv

SECURITY_HEADERS = {  # what every page gets (taskqueue/web/app.py)
    "content-security-policy": "frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
HTML = {"Accept": "text/html,application/xhtml+xml"}  # what a browser asks for


@pytest.fixture
def dashboard(queue, tmp_path, logs):
    board = start_dashboard(queue, tmp_path, logs)
    yield board
    board.stop()


def emit(queue: str, logs, path) -> str:
    result = run_script("emitter_of_tasks.py", "--queue", queue, "--file", str(path),
                        log_dir=logs)
    assert result.returncode == 0, result.stdout + result.stderr
    return re.search(r"\(run (\S+)\)", result.stdout)[1]


def scrape(board) -> dict:
    status, headers, body = board.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain"), status
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def sample(families: dict, family: str, name: str, **labels: str) -> float | None:
    for found in families[family].samples if family in families else []:
        if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
            return found.value
    return None


NON_BASE_UNITS = re.compile(r"_(milli|micro|nano)?(ms|us|ns|minutes?|hours?|days?|"
                            r"milliseconds|microseconds|kilobytes|megabytes|percent)(_|$)")
TIME_WORDS = re.compile(r"(^|_)(duration|wait|age|latency|time|elapsed)(_|$)")
SUFFIXES = ("_total", "_count", "_sum", "_bucket", "_created")


def convention_problems(families: dict) -> list[str]:
    """What breaks https://prometheus.io/docs/practices/naming/ (and promtool's lint)."""
    problems = []
    for name, family in families.items():
        where = f"{name} ({family.type})"
        if not re.fullmatch(r"taskqueue_[a-z][a-z0-9_]*[a-z0-9]", name):
            problems.append(f"{where}: not snake_case under the taskqueue_ namespace")
        if family.type not in ("counter", "gauge", "histogram"):
            problems.append(f"{where}: no TYPE of its own")
        if family.type != "counter" and name.endswith(SUFFIXES):
            problems.append(f"{where}: a suffix kept for counters and histograms")
        if NON_BASE_UNITS.search(name):
            problems.append(f"{where}: not in base units (seconds, bytes)")
        if TIME_WORDS.search(name) and not name.endswith("_seconds"):
            problems.append(f"{where}: a time without _seconds at the end")
        help_text = family.documentation.strip()
        if len(help_text) < 10 or help_text.replace(" ", "_").lower() == name:
            problems.append(f"{where}: no help text that says what it is")
        if name.endswith("_seconds") and "second" not in help_text:
            problems.append(f"{where}: its help text does not give its unit")
        for found in family.samples:
            expected = {"counter": (f"{name}_total", f"{name}_created"),
                        "histogram": (f"{name}_bucket", f"{name}_count", f"{name}_sum",
                                      f"{name}_created")}.get(family.type, (name,))
            if found.name not in expected:
                problems.append(f"{where}: a sample named {found.name}")
        if family.type == "histogram":
            problems += histogram_problems(where, family)
    return problems


def histogram_problems(where: str, family) -> list[str]:
    buckets = [(float(s.labels["le"]), s.value) for s in family.samples
               if s.name.endswith("_bucket")]
    count = next(s.value for s in family.samples if s.name.endswith("_count"))
    bounds = [bound for bound, _value in buckets]
    problems = []
    if bounds != sorted(bounds) or bounds[-1] != float("inf"):
        problems.append(f"{where}: buckets not ascending to +Inf")
    if [value for _bound, value in buckets] != sorted(value for _b, value in buckets):
        problems.append(f"{where}: buckets not cumulative")
    if buckets[-1][1] != count:
        problems.append(f"{where}: _count is not the +Inf bucket")
    return problems


@pytest.mark.fast
def test_published_adds_up_each_emitters_last_word_once():
    """Pure: the counter over made-up run notes (their ids name the emitter's process, as
    wire/events.py's event_id does): a --resume on the same run adds its own, a note read twice
    or said again counts once, "started" says 0."""
    from taskqueue.web.totals import RecordTotals

    def note(emitter: str, number: int, run: str, state: str, published: int) -> dict:
        return {"kind": "run", "id": f"{emitter}-{number}", "run_id": run, "state": state,
                "total": 5, "published": published, "time": 1.0}

    totals = RecordTotals()
    for record in (note("a1", 1, "r1", "started", 0), note("a1", 2, "r1", "finished", 3),
                   note("a1", 2, "r1", "finished", 3),  # read twice (a reconnect)
                   note("b2", 1, "r1", "started", 0), note("b2", 2, "r1", "progress", 1),
                   note("b2", 3, "r1", "finished", 2),  # --resume: the other two rows
                   note("c3", 1, "r2", "finished", 4)):
        totals.add(record)
    assert totals.published == 3 + 2 + 4
    for number, (outcome, seconds) in enumerate([("done", 1.5), ("cancelled", 0.0),
                                                 ("cancelled", 7.0), ("dead", 0.2)]):
        totals.add({"kind": "task", "id": f"w-{number}", "run_id": "r1", "outcome": outcome,
                    "seconds": seconds, "started": 2.0, "queued": 1.0})
    assert totals.outcomes["cancelled"] == 2 and totals.duration.cumulative()[-1][1] == 2
    assert totals.duration.sum == 1.5 + 0.2


@pytest.mark.fast
def test_the_convention_check_finds_what_it_is_meant_to_find():
    """The check itself, on text made up to break each rule once."""
    text = "\n".join([
        "# HELP taskqueue_published Tasks published", "# TYPE taskqueue_published gauge",
        "taskqueue_published_total 1",
        "# HELP taskqueue_wait_ms x", "# TYPE taskqueue_wait_ms gauge", "taskqueue_wait_ms 1",
        "# HELP taskqueue_run_time_seconds How long", "# TYPE taskqueue_run_time_seconds gauge",
        "taskqueue_run_time_seconds 1", ""])
    found = convention_problems({f.name: f for f in text_string_to_metric_families(text)})
    assert any(p.startswith("taskqueue_published_total") and "no TYPE" in p for p in found), \
        found  # a gauge's sample named like a counter's is a family of no type
    assert any("taskqueue_wait_ms" in p and "base units" in p for p in found), found
    assert any("taskqueue_wait_ms" in p and "help text" in p for p in found), found
    assert any("taskqueue_run_time_seconds" in p and "unit" in p for p in found), found


def test_metrics_count_publishes_leave_cancelled_attempts_out_and_follow_the_conventions(
        dashboard, queue, logs, tmp_path):
    out = tmp_path / "w.out"
    worker = start_worker("--queue", queue, "--name", "mw", "--seconds-per-dot", "1",
                          "--exit-when-idle", "2", log_dir=logs, out=out)
    wait_for(lambda: consumers(queue) == 1, what="the worker")
    doomed = emit(queue, logs, write_csv(tmp_path / "doomed.csv",
                                         [f"long {n}" + "." * 30 for n in range(4)]))
    wait_for(lambda: "received" in out.read_text(), what="the first task in hand")
    emit(queue, logs, write_csv(tmp_path / "other.csv", ["other 1.", "other 2.", "other 3."]))
    cancel = run_script("task_control.py", "cancel", "--queue", queue, "--run", doomed,
                        log_dir=logs, timeout=90)
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    assert worker.wait(timeout=90) == 0, out.read_text()

    def outcomes() -> dict:
        return {s.labels["outcome"]: s.value for s in scrape(dashboard)["taskqueue_tasks"].samples
                if s.name == "taskqueue_tasks_total" and s.value}

    seen: list[dict] = []
    try:
        wait_for(lambda: seen.append(outcomes()) or seen[-1] == {"cancelled": 4, "done": 3},
                 timeout=60, what="4 cancelled and 3 done in /metrics")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen {seen[-1]}\n{out.read_text()}") from None
    families = scrape(dashboard)
    assert families["taskqueue_tasks_published"].type == "counter"
    assert sample(families, "taskqueue_tasks_published", "taskqueue_tasks_published_total",
                  queue=queue) == 4 + 3, "both emitters' runs, as their records say"
    assert sample(families, "taskqueue_task_duration_seconds",
                  "taskqueue_task_duration_seconds_count") == 3, \
        "the 4 cancelled attempts (3 never started) are not durations"
    assert sample(families, "taskqueue_task_duration_seconds",
                  "taskqueue_task_duration_seconds_bucket", le="0.005") == 0, \
        "no zero-length attempt: each done one took about a second"
    assert convention_problems(families) == []


def test_an_unknown_run_answers_404_and_every_response_has_the_security_headers(
        dashboard, queue, logs, tmp_path):
    run = emit(queue, logs, write_csv(tmp_path / "t.csv", ["known 1."]))
    wait_for(lambda: dashboard.request("GET", f"/runs/{run}", headers=HTML)[0] == 200,
             what="the emitted run known to the dashboard")
    status, headers, body = dashboard.request("GET", "/runs/no-such-run", headers=HTML)
    assert status == 404 and headers["content-type"].startswith("text/html"), (status, body)
    page = body.decode()
    assert "No run no-such-run" in page and 'href="/runs"' in page, page
    assert "reading the record" not in page
    for path in ("/runs/no-such-run/tasks.json", "/runs/no-such-run/task.json?row=1",
                 "/runs/no-such-run/timeline.svg", "/runs/no-such-run/tasks.csv"):
        status, headers, body = dashboard.request("GET", path)
        assert status == 404 and headers["content-type"] == "application/json", (path, status)
        assert json.loads(body)["ok"] is False and "no-such-run" in json.loads(body)["error"]
    assert dashboard.request("GET", "/dead?run=no-such-run", headers=HTML)[0] == 404
    hostile = dashboard.request("GET", "/runs/%3Cb%3Ex", headers=HTML)
    assert hostile[0] == 404 and b"<b>" not in hostile[2], "an odd address is a 404 too"
    answers = {
        "a 404 page": dashboard.request("GET", "/runs/no-such-run", headers=HTML),
        "a 404 of an address nobody serves": dashboard.request("GET", "/no/such/page",
                                                              headers=HTML),
        "a 404 in JSON": dashboard.request("GET", "/runs/no-such-run/tasks.json"),
        "/healthz": dashboard.request("GET", "/healthz", token=False),
        "/metrics": dashboard.request("GET", "/metrics"),
        "a 401": dashboard.request("GET", "/runs", token=False),
        "a 405": dashboard.request("GET", "/control"),
        "a known run's page": dashboard.request("GET", f"/runs/{run}", headers=HTML),
    }
    for what, (status, headers, _body) in answers.items():
        for header, value in SECURITY_HEADERS.items():
            assert value in headers.get(header, ""), f"{what} ({status}) lacks {header}"
    assert answers["a 404 of an address nobody serves"][0] == 404
    assert b"<title>" in answers["a 404 of an address nobody serves"][2]


def test_a_browser_opening_an_unknown_run_sees_a_clear_not_found_page(queue, logs, tmp_path):
    board = start_dashboard(queue, tmp_path, logs)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=ensure_chromium(),
                                                 args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(board.address)
            response = page.goto(f"{board.base}/runs/expired-run-42")
            assert response is not None and response.status == 404
            heading = page.locator("h1").inner_text()
            assert heading == "No run expired-run-42", heading
            assert "reading the record" not in page.locator("main").inner_text()
            page.click("main a[href='/runs']")
            page.wait_for_url(f"{board.base}/runs")
            assert page.locator("h1").inner_text() == "Runs recorded"
            browser.close()
    finally:
        board.stop()
