"""The web view under test: a real ``task_report.py --serve`` in the background, plain HTTP
to it (http.client: no redirect followed, every header seen), and Debian's chromium for the
browser tests (installed when missing, as the interop tests' tools are)."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from tests.brokers import free_port
from tests.helpers import start_script, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@dataclass
class Dashboard:
    process: subprocess.Popen
    out: Path
    port: int
    token: str | None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.base}/?token={self.token}" if self.token else f"{self.base}/"

    def request(self, method: str, path: str, *, headers: dict | None = None,
                body: str | bytes | None = None, token: bool = True
                ) -> tuple[int, dict[str, str], bytes]:
        """One request; the token as a Bearer header unless *token* is False."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        sent = dict(headers or {})
        if token and self.token:
            sent.setdefault("Authorization", f"Bearer {self.token}")
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            return (response.status, {k.lower(): v for k, v in response.getheaders()},
                    response.read())
        finally:
            connection.close()

    def json(self, path: str) -> object:
        status, _headers, body = self.request("GET", path)
        assert status == 200, (status, body)
        return json.loads(body)

    def done_total(self) -> float | None:
        """taskqueue_tasks_total{outcome="done"} from /metrics (None: not there yet)."""
        from prometheus_client.parser import text_string_to_metric_families

        _status, _headers, body = self.request("GET", "/metrics")
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == "taskqueue_tasks_total" and sample.labels["outcome"] == "done":
                    return sample.value
        return None

    def stop(self) -> str:
        """SIGTERM, as a service manager would; returns what it printed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        return self.out.read_text()


def start_dashboard(queue: str, tmp_path: Path, logs: Path, *args: str) -> Dashboard:
    port = free_port()
    out = tmp_path / f"dashboard-{port}.out"
    process = start_script("task_report.py", "--serve", "--queue", queue, "--bind",
                           f"127.0.0.1:{port}", "--no-browser", "--reports-dir",
                           str(tmp_path / "reports"), *args, log_dir=logs, out=out)
    wait_for(lambda: "dashboard of queue" in out.read_text() or process.poll() is not None,
             timeout=60, what="the dashboard to start")
    assert process.poll() is None, out.read_text()
    match = re.search(r"\?token=(\S+)", out.read_text())
    return Dashboard(process, out, port, match[1] if match else None)


def dashboard_and_worker(node_url: str, queue: str, tmp_path: Path, logs: Path
                         ) -> tuple[Dashboard, subprocess.Popen]:
    """A dashboard and one worker (w1, the shout handler) of *queue* on the broker at
    *node_url*: what the broker-down tests stop the broker under."""
    board = start_dashboard(queue, tmp_path, logs, "--url", node_url)
    worker = start_script("listening_worker.py", "--url", node_url, "--queue", queue, "--name",
                          "w1", "--handler", "tests.handlers:shout", log_dir=logs,
                          out=tmp_path / "w.out")
    return board, worker


def form_post(dashboard: Dashboard, path: str, fields: dict, *, origin: str | None = "own",
              cookies: str = "", xsrf: str | None = None) -> tuple[int, bytes]:
    """A POST as a browser's form would send it (no Bearer header: cookies only)."""
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookies}
    if origin is not None:
        headers["Origin"] = dashboard.base if origin == "own" else origin
    if xsrf is not None:
        headers["X-XSRFToken"] = xsrf
    status, _headers, body = dashboard.request("POST", path, headers=headers,
                                               body=urlencode(fields), token=False)
    return status, body


def session_cookies(dashboard: Dashboard) -> tuple[str, str]:
    """Log in with the token as a browser does; returns (Cookie header, xsrf token)."""
    status, headers, _ = dashboard.request("GET", f"/?token={dashboard.token}", token=False)
    assert status == 302, status
    session = headers["set-cookie"].split(";")[0]
    status, headers, body = dashboard.request("GET", "/", headers={"Cookie": session},
                                              token=False)
    assert status == 200, status
    xsrf_cookie = headers["set-cookie"].split(";")[0]
    xsrf = re.search(rb'name="xsrf" content="([^"]+)"', body)[1].decode()
    return f"{session}; {xsrf_cookie}", xsrf


def ensure_chromium() -> str:
    """Debian's chromium, installed if missing (root, apt: as CI's machine has)."""
    if not Path(CHROMIUM).exists() and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], capture_output=True,
                       timeout=900, check=False,
                       env={"DEBIAN_FRONTEND": "noninteractive",
                            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed (apt-get install chromium)"
    return CHROMIUM
