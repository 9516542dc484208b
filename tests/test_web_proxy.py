"""The web view behind a TLS-terminating reverse proxy (issue 30, item 1): Debian's nginx, run
by the test on a port of its own with a self-signed certificate, in front of a real
``task_report.py --serve --public-url https://127.0.0.1:PORT/taskqueue/``, the real broker and
a queue of the test's own. Headless chromium logs in through the proxy under the prefix, gets
``Secure`` cookies scoped to the prefix, and a button acts; a POST from any other origin is
still refused. Without the option the same proxy fails as it did before (the reported symptom:
the login answers 403 "cross-origin request refused"), so nothing changes for who does not ask.

The nginx ``location`` used is the one docs/web.md gives: the snippet there is what is tested.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Page

from taskqueue.errors import UserError
from taskqueue.web.access import Public
from tests.brokers import free_port
from tests.dashboard import start_dashboard
from tests.helpers import ROOT, run_script, start_worker, wait_for, write_csv
from tests.test_web_browser import emit
from tests.test_web_http import control_commands

NGINX = "/usr/sbin/nginx"
PREFIX = "/taskqueue/"
USER, PASSWORD = "ops", "s3cret-pass"



def documented_location() -> str:
    """The ``location /taskqueue/ { ... }`` block of docs/web.md's nginx snippet."""
    text = (ROOT / "docs" / "web.md").read_text(encoding="utf-8")
    start = text.index(f"location {PREFIX} {{")
    depth = 0
    for end in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if text[end] == "}" and depth == 0:
            return text[start:end + 1]
    raise AssertionError("docs/web.md's nginx location block is not closed")


@dataclass
class Nginx:
    """One nginx of the test's own: config, certificate, pid file and logs in *home*."""

    home: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, location: str) -> Nginx:
        self.home.mkdir(parents=True)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(self.home / "key.pem"), "-out",
                        str(self.home / "cert.pem")], check=True, capture_output=True,
                       timeout=60)
        temp = {kind: self.home / kind for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                     "scgi")}
        config = self.home / "nginx.conf"
        config.write_text("\n".join([
            # As root, nginx's workers would become nobody, who cannot write in our directory.
            "user root;" if os.geteuid() == 0 else "",
            "worker_processes 1;",
            f"pid {self.home / 'nginx.pid'};",
            f"error_log {self.home / 'error.log'} info;",
            "events { worker_connections 128; }",
            "http {",
            f"  access_log {self.home / 'access.log'};",
            *[f"  {kind}_temp_path {path};" for kind, path in temp.items()],
            "  server {",
            f"    listen 127.0.0.1:{self.port} ssl;",
            f"    ssl_certificate {self.home / 'cert.pem'};",
            f"    ssl_certificate_key {self.home / 'key.pem'};",
            f"    {location}",
            "  }",
            "}", ""]))
        self.process = subprocess.Popen(
            [NGINX, "-p", str(self.home), "-e", str(self.home / "error.log"), "-c", str(config),
             "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(lambda: self.listening() or self.process.poll() is not None, timeout=30,
                 what="nginx to listen")
        assert self.process.poll() is None, (self.home / "error.log").read_text()
        return self

    def listening(self) -> bool:
        import socket

        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        """By its pid (its workers go with it: QUIT to the master), then its directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    if not Path(NGINX).exists():
        pytest.skip("Debian's nginx is not installed (apt-get install nginx)")
    proxy = Nginx(tmp_path / "nginx")
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def page(browser):
    context = browser.new_context(ignore_https_errors=True)  # the test's own certificate
    opened = context.new_page()
    yield opened
    context.close()


def auth_file(tmp_path: Path) -> Path:
    path = tmp_path / "auth"
    path.write_text(f"{USER}:{PASSWORD}\n")
    return path


def log_in(page: Page, address: str) -> None:
    """Open *address*, be sent to the login page, log in with the password."""
    page.goto(address)
    page.wait_for_selector("form.login")
    page.fill("input[name=user]", USER)
    page.fill("input[name=password]", PASSWORD)
    page.click("form.login button[type=submit]")


def confirm(page: Page, action: str, question: str) -> None:
    page.click(f"#control-card button[data-action={action}]")
    page.wait_for_selector("#confirm[open]")
    assert page.locator("#confirm-question").inner_text() == question
    page.click("#confirm-yes")


def test_behind_an_https_proxy_under_a_prefix_one_logs_in_and_the_buttons_act(
        page, nginx, queue, logs, tmp_path):
    public = f"{nginx.origin}{PREFIX}"
    board = start_dashboard(queue, tmp_path, logs, "--auth-file", str(auth_file(tmp_path)),
                            "--public-url", public)
    try:
        assert f"dashboard of queue {queue!r}: {public}\n" in board.out.read_text(), \
            "the address printed is the public one"
        nginx.start(documented_location().replace("127.0.0.1:8800", f"127.0.0.1:{board.port}"))
        log_in(page, public)
        page.wait_for_url(public)
        page.wait_for_selector("#connection.ok")  # script, style and event stream: all via nginx
        assert page.evaluate("document.styleSheets[0].cssRules.length") > 0, "the style too"

        cookies = {c["name"]: c for c in page.context.cookies()}
        for name in ("taskqueue_session", "_xsrf"):
            assert cookies[name]["secure"] and cookies[name]["path"] == PREFIX, cookies[name]
            assert cookies[name]["httpOnly"] and cookies[name]["sameSite"] == "Strict"

        worker_out = tmp_path / "worker.out"
        start_worker("--queue", queue, "--name", "w1", log_dir=logs, out=worker_out)
        page.wait_for_selector("#workers tr.worker")  # pushed by the stream, through nginx
        confirm(page, "pause", "Pause 1 worker(s)?")
        page.wait_for_selector("#toast.ok:has-text('paused queue')")
        page.wait_for_selector("#paused:not([hidden])")
        wait_for(lambda: "paused" in worker_out.read_text(), what="the worker paused")
        confirm(page, "resume", "Resume 1 worker(s)?")
        page.wait_for_selector("#toast.ok:has-text('resumed queue')")
        page.wait_for_selector("#paused[hidden]", state="attached")
        assert [c["command"] for c in control_commands(queue)] == ["pause", "resume"]

        # A run's page: its links, its table (fetched) and its picture, under the prefix.
        run = emit(queue, logs, write_csv(tmp_path / "t.csv", ["one.", "two.", "three."]))
        page.wait_for_selector(f"#run-link:has-text('{run}')")
        wait_for(lambda: page.locator("#r-done").inner_text() == "3 / 3", what="the run done")
        page.click("nav a:has-text('Runs')")
        page.wait_for_url(f"{public}runs")
        page.click(f"#runs a:has-text('{run}')")
        page.wait_for_url(f"{public}runs/{run}")
        wait_for(lambda: page.locator("#tasks tbody tr").count() == 3, what="the run's table")
        wait_for(lambda: page.evaluate("document.getElementById('timeline').naturalWidth") > 0,
                 what="the run's timeline picture")

        # Strict all the same: a POST whose Origin is not the public one changes nothing, be it
        # another site or the address the dashboard itself listens on (http, not https).
        ticket = page.request.get(f"{public}control/preview.json?action=pause").json()["ticket"]
        xsrf = page.locator('meta[name="xsrf"]').get_attribute("content")
        for origin in ("https://evil.example", f"http://127.0.0.1:{nginx.port}",
                       f"http://127.0.0.1:{board.port}"):
            refused = page.request.post(f"{public}control", form={"ticket": ticket},
                                        headers={"Origin": origin, "X-XSRFToken": xsrf})
            assert refused.status == 403 and "cross-origin" in refused.text(), refused.text()
        assert [c["command"] for c in control_commands(queue)] == ["pause", "resume"]
        assert f"{PREFIX}control" in (nginx.home / "access.log").read_text(), "through nginx"
    finally:
        board.stop()


def test_without_the_option_the_same_proxy_refuses_the_login_as_before(
        page, nginx, queue, logs, tmp_path):
    """The reported symptom, kept on purpose when not asked otherwise: the dashboard trusts no
    forwarded header, so the browser's https origin is not the http://Host it sees."""
    board = start_dashboard(queue, tmp_path, logs, "--auth-file", str(auth_file(tmp_path)))
    try:
        nginx.start(f"location / {{ proxy_pass http://127.0.0.1:{board.port}; "
                    "proxy_set_header X-Forwarded-Proto $scheme; "
                    "proxy_set_header X-Forwarded-Host $http_host; }")
        with page.expect_response(re.compile(r".*/login$")) as answer:
            log_in(page, f"{nginx.origin}/")
        assert answer.value.status == 403
        assert "cross-origin request refused" in answer.value.text()
        assert "taskqueue_session" not in {c["name"] for c in page.context.cookies()}
    finally:
        board.stop()


def test_with_a_public_url_the_token_cookie_and_the_origin_are_the_public_ones(
        queue, logs, tmp_path):
    """Plain HTTP to the dashboard itself, as the proxy speaks to it (no nginx needed): the
    token's visit under the prefix, the cookie it becomes, and which Origin may post."""
    public = "https://ops.example.com/taskqueue/"
    board = start_dashboard(queue, tmp_path, logs, "--public-url", public)
    try:
        assert f": {public}?token={board.token}\n" in board.out.read_text()
        status, headers, _ = board.request("GET", f"/taskqueue/?token={board.token}",
                                           token=False)
        assert (status, headers["location"]) == (302, "/taskqueue/")
        cookie = headers["set-cookie"]
        assert "Secure" in cookie and "Path=/taskqueue/" in cookie and "HttpOnly" in cookie
        session = cookie.split(";")[0]
        status, headers, body = board.request("GET", "/taskqueue/", token=False,
                                              headers={"Cookie": session,
                                                       "Host": "ops.example.com"})
        assert status == 200 and b'src="/taskqueue/static/app.js"' in body
        assert b'data-root="/taskqueue/"' in body and b'href="/taskqueue/runs"' in body
        xsrf_cookie = headers["set-cookie"]
        assert "Secure" in xsrf_cookie and "Path=/taskqueue/" in xsrf_cookie
        xsrf = re.search(rb'name="xsrf" content="([^"]+)"', body)[1].decode()
        cookies = f"{session}; {xsrf_cookie.split(';')[0]}"
        status, _, body = board.request("GET", "/runs", token=False)
        assert status == 404 and b"under /taskqueue/" in body, "outside the prefix: said so"
        status, _, body = board.request("GET", "/", token=False, headers={"Accept": "text/html"})
        assert status == 404 and b"under <code>/taskqueue/</code>" in body, body
        assert board.request("GET", "/taskqueue")[1]["location"] == "/taskqueue/"
        assert board.request("GET", "/taskqueue/healthz", token=False)[0] == 200

        def post(origin: str) -> int:
            ticket = board.json("/taskqueue/control/preview.json?action=pause")["ticket"]
            return board.request("POST", "/taskqueue/control", token=False,
                                 body=f"ticket={ticket}",
                                 headers={"Cookie": cookies, "X-XSRFToken": xsrf,
                                          "Origin": origin, "Content-Type":
                                          "application/x-www-form-urlencoded"})[0]

        assert post(board.base) == 403, "the address it listens on is not the public one"
        assert post("http://ops.example.com") == 403, "nor is the public host over http"
        assert control_commands(queue) == []
        assert post("https://ops.example.com") == 200
        assert [c["command"] for c in control_commands(queue)] == ["pause"]
        status, _, _ = board.request("GET", "/taskqueue/", headers={"Host": "evil.example"})
        assert status == 403, "another name that resolves here is still refused"
    finally:
        board.stop()


def test_a_public_url_that_is_not_one_is_one_clear_line(logs):
    result = run_script("task_report.py", "--serve", "--public-url",
                        "https://user:hunter2@ops.example.com/taskqueue/", log_dir=logs)
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1 and "--public-url" in result.stderr, result.stderr
    assert "hunter2" not in result.stderr + result.stdout and "Traceback" not in result.stderr
    result = run_script("task_report.py", "--public-url", "https://ops.example.com/",
                        log_dir=logs)
    assert result.returncode == 2 and "go with --serve" in result.stderr, result


@pytest.mark.fast
def test_the_public_url_gives_the_origin_the_prefix_and_secure_cookies():
    given = Public.parse("HTTPS://Ops.Example.com:443/taskqueue")
    assert (given.origin, given.prefix, given.secure) == (
        "https://ops.example.com", "/taskqueue/", True)
    assert given.url == "https://ops.example.com/taskqueue/"
    assert given.host_names() == {"ops.example.com"}
    plain = Public.parse("http://[::1]:8080/a/b/")
    assert (plain.origin, plain.prefix, plain.secure) == ("http://[::1]:8080", "/a/b/", False)
    assert plain.host_names() == {"[::1]:8080", "[::1]"}
    assert Public.parse(None) == Public() and Public().prefix == "/" and not Public().secure
    for wrong in ("ops.example.com/taskqueue/", "ftp://ops/", "https:///x", "https://o/?a=1",
                  "https://o/#top", "https://o/a/../b/", "https://o/a b/", "https://o:99999/"):
        with pytest.raises(UserError):
            Public.parse(wrong)
