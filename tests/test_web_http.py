"""The web view at the HTTP level (issue 23), against a real ``task_report.py --serve`` and
the real broker: every route refuses anonymous access, control only by POST with a CSRF token
from our own origin, a ticket does its action once, /metrics by the conventions, ten live pages
cost the broker one reader; and the pure parts (the live page's data at 200 x 8 slots)."""

from __future__ import annotations

import csv
import http.client
import io
import re
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from taskqueue.views.live import LiveState
from taskqueue.web.access import Access, is_loopback, parse_bind
from taskqueue.web.snapshot import live_json
from tests.brokers import free_port
from tests.dashboard import form_post, session_cookies, start_dashboard
from tests.helpers import (
    MAIN_URL,
    delete_queues,
    run_python,
    run_script,
    start_worker,
    wait_for,
    write_csv,
)

ROUTES = ["/", "/live.json", "/stream", "/runs", "/runs/r1", "/runs/r1/tasks.json",
          "/runs/r1/task.json?row=1", "/runs/r1/timeline.svg", "/runs/r1/tasks.csv", "/dead",
          "/control/preview.json?action=pause", "/metrics", "/static/app.js", "/static/live.js",
          "/static/run.js", "/static/app.css"]


@pytest.fixture
def dashboard(queue, tmp_path, logs):
    board = start_dashboard(queue, tmp_path, logs)
    yield board
    said = board.stop()
    assert "dashboard stopped:" in said, said


def control_commands(queue: str, url: str = MAIN_URL) -> list[dict]:
    """Every command on the queue's control stream (read, never taken away)."""
    import pika

    from taskqueue.broker.config import QueueSpec
    from taskqueue.control.state import decode

    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        try:
            channel.queue_declare(QueueSpec(queue).control_name, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return []
        channel.basic_qos(prefetch_count=100)
        found = []
        for method, _props, body in channel.consume(
                QueueSpec(queue).control_name, inactivity_timeout=1.0,
                arguments={"x-stream-offset": "first"}):
            if method is None:
                break
            channel.basic_ack(method.delivery_tag)
            record = decode(body)
            if record:
                found.append(record)
        return found
    finally:
        import contextlib

        with contextlib.suppress(pika.exceptions.AMQPError):
            connection.close()


def test_every_route_refuses_anonymous_access_and_the_token_opens_it(dashboard):
    for route in ROUTES:
        status, headers, _ = dashboard.request("GET", route, token=False)
        assert status == 401, (route, status)
        assert "access-control-allow-origin" not in headers, route
        wrong = dashboard.request("GET", route, token=False,
                                  headers={"Authorization": "Bearer not-the-token"})
        assert wrong[0] == 401, route
    assert dashboard.request("GET", "/healthz", token=False)[0] == 200
    status, headers, _ = dashboard.request("GET", f"/?token={dashboard.token}", token=False)
    assert status == 302 and headers["location"] == "/", "the token leaves the address bar"
    cookie = headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower(), cookie
    status, headers, body = dashboard.request("GET", "/", token=False,
                                              headers={"Cookie": cookie.split(";")[0]})
    scripts = re.findall(rb"<script[^>]*>", body)
    assert status == 200 and b'<script src="/static/app.js" defer>' in scripts, body
    assert all(re.fullmatch(rb'<script src="/static/[a-z]+\.js" defer>', tag) for tag in scripts)
    assert body.count(b"</script>") == len(scripts), "no script of the page's own"
    csp = headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "access-control-allow-origin" not in headers
    rebound = dashboard.request("GET", "/live.json", headers={"Host": "evil.example:80"})
    assert rebound[0] == 403, "another name for this address (DNS rebinding) is refused"
    assert dashboard.request("GET", "/live.json", headers={
        "Host": f"localhost:{dashboard.port}"})[0] == 200


def test_several_queues_every_route_refuses_anonymous_access_and_foreign_control(
        queue, tmp_path, logs):
    """With --queue A --queue B every page of each queue (under /q/<name>/), the overview and
    its JSON, and the queue's address without its slash ask for the login as one queue's do;
    a control POST to B from another origin, or with A's ticket, changes nothing."""
    other = f"{queue}.b"
    board = start_dashboard(queue, tmp_path, logs, "--queue", other)
    try:
        roots = [f"/q/{name}" for name in (queue, other)]
        routes = ["/", "/overview.json", "/metrics", *roots,
                  *(root + route for root in roots for route in ROUTES)]
        for route in routes:
            assert board.request("GET", route, token=False)[0] == 401, route
        cookies, xsrf = session_cookies(board)
        ticket = board.json(f"{roots[0]}/control/preview.json?action=pause")["ticket"]
        b_ticket = board.json(f"{roots[1]}/control/preview.json?action=pause")["ticket"]
        assert form_post(board, f"{roots[1]}/control", {"ticket": b_ticket}, cookies=cookies,
                         xsrf=xsrf, origin="http://evil.example")[0] == 403, "another site"
        crossed = form_post(board, f"{roots[1]}/control", {"ticket": ticket}, cookies=cookies,
                            xsrf=xsrf)
        assert b"paused queue" not in crossed[1], ("A's ticket does not act on B", crossed)
        assert control_commands(queue) == [] and control_commands(other) == []
    finally:
        board.stop()
        delete_queues(other)


def test_control_is_post_only_with_a_csrf_token_from_our_origin_and_a_ticket_acts_once(
        dashboard, queue):
    assert dashboard.request("GET", "/control")[0] == 405
    preview = dashboard.json("/control/preview.json?action=pause")
    assert preview["question"] == "Pause 0 worker(s)?" and preview["ticket"]
    cookies, xsrf = session_cookies(dashboard)
    fields = {"ticket": preview["ticket"]}
    assert form_post(dashboard, "/control", fields, cookies=cookies)[0] == 403, "no CSRF token"
    assert form_post(dashboard, "/control", fields, cookies=cookies, xsrf=xsrf,
                     origin="http://evil.example")[0] == 403, "another site's form"
    assert form_post(dashboard, "/control", fields, cookies=cookies, xsrf=xsrf,
                     origin=None)[0] == 403, "no origin at all"
    assert form_post(dashboard, "/control", fields, xsrf="0123abcd",
                     cookies="_xsrf=0123abcd")[0] == 401, "a CSRF pair of its own, no login"
    assert control_commands(queue) == [], "nothing refused changed anything"
    first = form_post(dashboard, "/control", fields, cookies=cookies, xsrf=xsrf)
    second = form_post(dashboard, "/control", fields, cookies=cookies, xsrf=xsrf)
    assert first[0] == 200 and b"paused queue" in first[1], first
    assert second[0] == 200 and b'"again": true' in second[1], second
    assert [c["command"] for c in control_commands(queue)] == ["pause"], "once, not twice"
    said = dashboard.out.read_text()
    assert re.search(r"dashboard control by token from 127\.0\.0\.1: pause -> paused queue",
                     said), said


def test_metrics_follow_the_conventions_and_a_gone_workers_series_go(dashboard, queue, logs,
                                                                     tmp_path):
    csv = write_csv(tmp_path / "t.csv", [f"t{n}." for n in range(12)])
    assert run_script("emitter_of_tasks.py", "--queue", queue, "--file", str(csv),
                      log_dir=logs).returncode == 0
    worker = start_worker("--queue", queue, "--name", "mw", "--seconds-per-dot", "0.05",
                          log_dir=logs, out=tmp_path / "w.out")

    def families() -> dict:
        status, headers, body = dashboard.request("GET", "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        return {f.name: f for f in text_string_to_metric_families(body.decode())}

    def value(metrics: dict, name: str, sample: str, **labels: str) -> float | None:
        for s in metrics[name].samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
        return None

    wait_for(lambda: value(families(), "taskqueue_tasks", "taskqueue_tasks_total",
                           outcome="done") == 12, timeout=60, what="12 done in /metrics")
    metrics = families()
    assert metrics["taskqueue_tasks"].type == "counter"
    assert value(metrics, "taskqueue_task_duration_seconds",
                 "taskqueue_task_duration_seconds_count") == 12
    assert value(metrics, "taskqueue_task_wait_seconds", "taskqueue_task_wait_seconds_count") == 12
    assert value(metrics, "taskqueue_queue_messages", "taskqueue_queue_messages",
                 state="ready") == 0
    assert value(metrics, "taskqueue_worker_slots", "taskqueue_worker_slots", worker="mw") == 1
    for family in metrics.values():
        for sample in family.samples:
            assert not {"id", "row", "run", "run_id", "task", "message_id"} & set(sample.labels)
            assert sample.labels.get("queue") == queue
    worker.kill()
    wait_for(lambda: value(families(), "taskqueue_workers", "taskqueue_workers",
                           state="gone") == 1, timeout=30, what="the killed worker gone")
    assert value(families(), "taskqueue_worker_slots", "taskqueue_worker_slots",
                 worker="mw") is None, "a gone worker's series are removed"


def test_the_csv_download_shows_a_task_that_looks_like_a_formula_as_text(dashboard, queue,
                                                                         logs, tmp_path):
    """A spreadsheet opening the download must not run a task's text ("CSV injection"); the
    CLI's --csv, read by programs, keeps every value as recorded."""
    tasks = ["=1+1", "+cmd|' /C calc'!A0", "-2+3", "@SUM(1)", "plain"]
    emitted = run_script("emitter_of_tasks.py", "--queue", queue, "--file",
                         str(write_csv(tmp_path / "f.csv", tasks)), log_dir=logs)
    assert emitted.returncode == 0, emitted.stdout + emitted.stderr
    run = re.search(r"\(run (\S+)\)", emitted.stdout)[1]
    worker = start_worker("--queue", queue, "--name", "fw", "--seconds-per-dot", "0.01",
                          "--exit-when-idle", "1.5", log_dir=logs, out=tmp_path / "w.out")
    assert worker.wait(timeout=60) == 0
    wait_for(lambda: dashboard.done_total() == 5, timeout=60, what="5 done on the dashboard")

    def downloaded() -> list[str] | None:
        status, _headers, body = dashboard.request("GET", f"/runs/{run}/tasks.csv")
        rows = list(csv.DictReader(io.StringIO(body.decode()))) if status == 200 else []
        return [row["task"] for row in rows] if len(rows) == 5 else None

    assert wait_for(downloaded, timeout=30, what="the run's CSV") == [
        "'=1+1", "'+cmd|' /C calc'!A0", "'-2+3", "'@SUM(1)", "plain"]
    out = tmp_path / "cli.csv"
    assert run_script("task_report.py", "--queue", queue, "--reports-dir", str(tmp_path / "r"),
                      "--csv", str(out), "--run", run, log_dir=logs).returncode == 0
    with open(out, encoding="utf-8", newline="") as handle:
        assert [row["task"] for row in csv.DictReader(handle)] == tasks


def test_a_cell_a_spreadsheet_would_run_is_written_as_text():
    from taskqueue.results.table import as_text_cell

    for formula in ["=1+1", "+A1", "-2+3", "@SUM(1)", "\t=1", "\r=1", "=-5"]:
        assert as_text_cell(formula) == "'" + formula
    for kept in ["-5", "+1.5e3", "-", "plain", "a=b", "", None, 3, 0.25]:
        assert as_text_cell(kept) == kept


def dashboard_connections(pid: int) -> int:
    listed = subprocess.run(["ss", "-tnpH", "state", "established", "( dport = :5672 )"],
                            capture_output=True, text=True, check=True, timeout=10).stdout
    return sum(1 for line in listed.splitlines() if f"pid={pid}," in line)


def test_ten_live_pages_cost_the_broker_what_one_does(dashboard):
    pid = dashboard.process.pid
    wait_for(lambda: dashboard_connections(pid) == 1, what="the dashboard's one connection")
    streams = []
    for _ in range(10):
        connection = http.client.HTTPConnection("127.0.0.1", dashboard.port, timeout=30)
        connection.request("GET", "/stream",
                           headers={"Authorization": f"Bearer {dashboard.token}"})
        response = connection.getresponse()
        assert response.status == 200
        assert response.readline().startswith(b"retry:"), "the server sets the pace"
        streams.append((connection, response))
    for _connection, response in streams:  # each gets the snapshots
        while not (line := response.readline()).startswith(b"data:"):
            assert line, "the stream ended"
        assert b'"queue"' in line
    assert dashboard_connections(pid) == 1, "ten pages, still one connection to the broker"
    for connection, _response in streams:
        connection.close()


def test_serving_beyond_loopback_without_a_password_refuses_in_one_line(logs, tmp_path):
    result = run_script("task_report.py", "--serve", "--bind", f"0.0.0.0:{free_port()}",
                        "--no-browser", log_dir=logs)
    assert result.returncode == 2, result
    assert "refusing to serve on '0.0.0.0' without a password" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    bad = tmp_path / "auth"
    bad.write_text("no-colon-here\n")
    result = run_script("task_report.py", "--serve", "--auth-file", str(bad), log_dir=logs)
    assert result.returncode == 2 and "USER:PASSWORD" in result.stderr, result
    code = ("import sys; sys.modules['tornado'] = None; sys.argv = ['task_report.py', "
            "'--serve']; from taskqueue.commands.reporter import entry; entry()")
    result = run_python(code, log_dir=logs, timeout=60)
    assert result.returncode == 2 and 'pip install "taskqueue[web]"' in result.stderr, result
    assert "Traceback" not in result.stderr


def test_with_an_auth_file_the_browser_logs_in_and_scripts_use_basic(queue, tmp_path, logs):
    auth = tmp_path / "auth"
    auth.write_text("ops:s3cret-pass\n")
    board = start_dashboard(queue, tmp_path, logs, "--auth-file", str(auth))
    try:
        assert board.token is None and "s3cret" not in board.out.read_text()
        status, headers, _ = board.request("GET", "/", headers={"Accept": "text/html"})
        assert status == 302 and headers["location"].startswith("/login")
        assert board.request("GET", "/metrics")[0] == 401
        status, headers, body = board.request("GET", "/login")
        xsrf = re.search(rb'name="_xsrf" value="([^"]+)"', body)[1].decode()
        cookie = headers["set-cookie"].split(";")[0]
        wrong = form_post(board, "/login", {"user": "ops", "password": "nope", "_xsrf": xsrf},
                          cookies=cookie)
        assert wrong[0] == 403
        status, headers, _ = board.request(
            "POST", "/login", token=False, body=f"user=ops&password=s3cret-pass&_xsrf={xsrf}",
            headers={"Cookie": cookie, "Origin": board.base,
                     "Content-Type": "application/x-www-form-urlencoded"})
        assert status == 302, status
        session = headers["set-cookie"].split(";")[0]
        assert board.request("GET", "/runs", headers={"Cookie": session})[0] == 200
        import base64

        basic = "Basic " + base64.b64encode(b"ops:s3cret-pass").decode()
        assert board.request("GET", "/metrics", headers={"Authorization": basic})[0] == 200
        wrong_basic = "Basic " + base64.b64encode(b"ops:s3cret-pasS").decode()
        assert board.request("GET", "/metrics", headers={"Authorization": wrong_basic})[0] == 401
    finally:
        board.stop()


def test_a_record_it_cannot_read_is_skipped_and_the_dashboard_goes_on(dashboard, queue):
    """A stranger's record in the results stream (a number that is not one) is one log line;
    the records after it are still counted (before: the reader stalled on it for good)."""
    import json

    import pika

    from taskqueue.broker.config import QueueSpec
    from taskqueue.wire.record import stream_arguments

    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    channel = connection.channel()
    channel.queue_declare(QueueSpec(queue).results_name, durable=True,
                          arguments=stream_arguments())
    channel.confirm_delivery()
    bad = {"kind": "task", "id": "bad-1", "run_id": "r", "outcome": "done", "started": "soon",
           "finished": [1], "seconds": "long"}
    good = {"kind": "task", "id": "good-1", "run_id": "r", "outcome": "done", "started": 1.0,
            "finished": 2.0, "seconds": 1.0}
    for record in (bad, good):
        channel.basic_publish("", QueueSpec(queue).results_name, json.dumps([record]).encode())
    connection.close()

    wait_for(lambda: dashboard.done_total() == 1, timeout=30, what="the good record counted")
    # (A stream this new may refuse the first reading, "no replica on the local node" on 3.10:
    # then the page says so until the reader's next try, 2 s on.)
    wait_for(lambda: json.loads(dashboard.request("GET", "/live.json")[2])["problem"] is None,
             timeout=30, what="the reader going on, no problem shown")
    assert "skipped a record it cannot read" in dashboard.out.read_text()


def test_after_login_only_a_path_of_ours_is_followed():
    from taskqueue.web.app import local_path

    for bad in ("//evil.example/x", "/\\evil.example/x", "http://evil.example/",
                "javascript:alert(1)", "/\tx", "evil"):
        assert local_path(bad) == "/", bad
    assert local_path("/runs/r1?x=1") == "/runs/r1?x=1"


# --- the pure parts ----------------------------------------------------------------------------
def test_the_live_data_folds_200_workers_of_8_slots_into_200_rows():
    state = LiveState("q")
    now = time.time()
    for w in range(200):
        state.feed({"kind": "snapshot", "worker": f"w{w}", "host": "h", "time": now,
                    "slots": [{"slot": f"w{w}/{s}", "state": "busy" if s < 4 else "idle",
                               "since": now - s, "row": w * 8 + s, "task": "t."}
                              for s in range(8)]})
    data = live_json(state, now)
    assert len(data["workers"]) == 200 and not data["slots_listed"]
    assert all(row["slot_rows"] == [] for row in data["workers"])
    assert data["workers"][0]["state"] == "4/8 busy: rows 0-3, longest 3 s"
    assert data["workers"][1]["name"] == "w1" and data["workers"][2]["name"] == "w2"
    assert data["worker_states"] == {"busy": 200} and data["queue"]["in_progress"] == 800
    gone = live_json(state, now + 10)
    assert gone["worker_states"] == {"gone": 200} and gone["queue"]["in_progress"] == 0


def test_access_rules():
    assert parse_bind("127.0.0.1:8800") == ("127.0.0.1", 8800)
    assert parse_bind("[::1]:9000") == ("::1", 9000)
    assert is_loopback("127.0.0.5") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("myhost")
    access = Access.with_token()
    assert access.token_ok(access.token) and not access.token_ok(access.token + "x")
    assert not access.token_ok(None) and access.header_ok(f"Bearer {access.token}") == "token"
    login = Access(user="a", password="b")
    assert login.password_ok("a", "b") and not login.password_ok("a", "c")
    assert not login.token_ok("anything")


def test_the_run_index_gives_the_csvs_rows_in_its_order(tmp_path):
    """Paging through the index is the CSV (results/table.py): same rows, same deciding record
    (a retried task, one done twice, one still failing, a cancelled one, id-less tasks)."""
    import json

    from taskqueue.results.table import task_rows
    from taskqueue.web.index import RunIndex

    def task(row, outcome, attempt=1, run="r1", **more):
        return {"kind": "task", "run_id": run, "row": row, "outcome": outcome,
                "attempt": attempt, "task": f"t{row}", "started": attempt, "seconds": 0.1,
                "message_id": f"m{row}", **more}

    records = [task(1, "failed"), task(2, "done"), task(1, "done", 2), task(3, "failed"),
               task(2, "done", 1, result="again"), task(4, "cancelled"), {"kind": "run"},
               task(5, "dead", 3, reason="boom"), task(9, "done", run="other"),
               task(None, "done", message_id="x1"), task(None, "failed", message_id="x2"),
               task(None, "done", 2, message_id="x2"), task(4, "failed", 2)]
    path = tmp_path / "r1.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"torn": \n')
    table, rows = task_rows("r1", lambda: records)
    expected = list(rows)
    index = RunIndex(path, "r1")
    assert index.rows(index.positions()) == expected
    assert index.counts() == table.counts() and index.tasks == table.tasks == 7
    assert [r["row"] for r in index.rows(index.positions("done"))] == \
        [r["row"] for r in expected if r["outcome"] == "done"]
