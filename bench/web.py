#!/usr/bin/env python3
"""The web view's costs (issue 23), in this process, on made-up records:

* memory: what the dashboard keeps as it reads the results record (the live state and the
  totals behind /metrics and the runs page), at 10k, 100k and 1M records: it must stay flat;
* the first page of a 100k-task run's table (one row per task, paged), read from the run's
  copy as the server keeps it, against the baseline of writing the same run's CSV
  (``task_report.py --csv``) in the same run.

* with ``--broker N``: a real dashboard (``task_report.py --serve``) reading N records from a
  results stream on the main broker: its whole process's memory once it has read them all;
  then one headless chromium (Debian's, driven by Playwright) opens 1 tab of the live page,
  then 20, then 3 run pages as well, through the printed address, each held ``--hold``
  seconds, then closes them; then opens and closes those run pages again, then 3 other runs':
  the server's RSS, its live streams (its own gauge), the TCP connections to its port and its
  CPU at each step.

    python bench/web.py [--write] [--broker 1000000] [--hold 30]   # --write: bench/web.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from taskqueue.results.table import write_tasks_file
from taskqueue.views.live import LiveState
from taskqueue.web.copies import RunCopies
from taskqueue.web.runs import KEPT_INDEXES, RunPages
from taskqueue.web.totals import RecordTotals

RUN = "20261201T100000Z-bench0"
TABS = 20  # of the live page, in one browser
RUN_PAGES = 3  # opened besides the live tabs (then 3 others); each a run of 100,000 tasks


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def record(n: int, run: str) -> dict:
    now = 1_796_000_000.0 + n * 0.01
    outcome = "dead" if n % 97 == 0 else "done"
    return {"kind": "task", "id": f"p-{n}", "run_id": run, "row": n % 100_000 + 1,
            "message_id": f"m-{n}", "task": f"task number {n} ....", "worker": f"w{n % 50}",
            "slot": f"w{n % 50}/{n % 4}", "host": "bench", "attempt": 1, "outcome": outcome,
            "queued": now - 1, "started": now, "finished": now + 0.2, "seconds": 0.2,
            "result": f"result {n}" if outcome == "done" else None,
            "reason": None if outcome == "done" else f"failed 1 times; last: boom {n}"}


def run_of(n: int) -> str:
    """The run of record *n*: a run per 100,000 records."""
    return f"20261201T1{n // 100_000:05d}Z-bench"


def memory() -> list[tuple[int, float]]:
    state, totals = LiveState("bench", gone_after=4.5), RecordTotals()
    base = rss_mb()
    marks, out = {10_000, 100_000, 1_000_000}, []
    for n in range(1, 1_000_001):
        r = record(n, run_of(n))
        state.feed(r)
        totals.add(r)
        if n in marks:
            out.append((n, rss_mb() - base))
    return out


def first_page(tasks: int) -> tuple[float, float, float, float]:
    with tempfile.TemporaryDirectory() as directory:
        copies = RunCopies(Path(directory), "bench")
        copies.start()
        for start in range(0, tasks, 1000):  # as the feed adds them: a stream message a time
            copies.add([record(n, RUN) for n in range(start, min(tasks, start + 1000))])
        copies.close(remove=False)
        pages = RunPages(copies, "bench")
        started = time.perf_counter()
        write_tasks_file(Path(directory) / "all.csv", RUN, pages.records(RUN))
        baseline = time.perf_counter() - started
        started = time.perf_counter()
        page = pages.page(RUN)
        cold = time.perf_counter() - started
        assert len(page["rows"]) == 50 and page["tasks"] == tasks, page["tasks"]
        started = time.perf_counter()
        pages.page(RUN, outcome="dead", page=2)
        filtered = time.perf_counter() - started
        started = time.perf_counter()
        pages.page(RUN, text="number 4242")
        searched = time.perf_counter() - started
        return baseline, cold, filtered, searched


@dataclass
class Moment:
    """The server at one moment of the tabs' measurement."""

    what: str
    rss_mb: float
    streams: float  # its own gauge: taskqueue_dashboard_live_pages
    connections: int  # established TCP connections to its port (/proc/net/tcp)
    cpu: float | None = None  # share of one core over the hold (None: not held)


@dataclass
class Server:
    """A real ``task_report.py --serve`` that has read the records."""

    pid: int
    port: int
    token: str
    start_mb: float
    read_mb: float
    seconds: float  # to read them all

    def moment(self, what: str, hold: float = 0) -> Moment:
        """Its figures, after *hold* seconds (its CPU share over them) when given."""
        cpu = None
        if hold:
            began, ticks = time.monotonic(), _cpu_ticks(self.pid)
            time.sleep(hold)
            cpu = (_cpu_ticks(self.pid) - ticks) / os.sysconf("SC_CLK_TCK") / \
                (time.monotonic() - began)
        return Moment(what, _rss(Path(f"/proc/{self.pid}/status")),
                      _metric(self.port, self.token, "taskqueue_dashboard_live_pages"),
                      _connections(self.port), cpu)

    def wait_for(self, streams: int, connections: int | None = None) -> None:
        """Until its gauge says *streams* (and, given, *connections* to its port)."""
        deadline = time.monotonic() + 60
        while _metric(self.port, self.token, "taskqueue_dashboard_live_pages") != streams or \
                (connections is not None and _connections(self.port) != connections):
            if time.monotonic() > deadline:
                raise RuntimeError(f"not {streams} streams, {connections} connections in 60 s")
            time.sleep(0.5)


@contextmanager
def real_dashboard(count: int, url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
                   ) -> Iterator[Server]:
    """A dashboard of a queue of its own once it read *count* records from its results
    stream; the server stopped (by its pid) and the queue deleted afterwards."""
    import pika

    from taskqueue.broker.config import QueueSpec
    from taskqueue.control.remove import QueueRemover
    from taskqueue.wire.record import stream_arguments

    queue = f"bench.web.{uuid.uuid4().hex[:6]}"
    spec = QueueSpec(queue)
    root = Path(__file__).resolve().parent.parent
    # The queue as a deployment has it (its first emitter declares it; one task waits): a
    # dashboard of a queue not yet declared asks again and again (some 30% of a core).
    subprocess.run([sys.executable, str(root / "emitter_of_tasks.py"), "--queue", queue,
                    "--url", url, "--message", "bench"], check=True, capture_output=True)
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_declare(spec.results_name, durable=True, arguments=stream_arguments())
    channel.confirm_delivery()
    for start in range(0, count, 100):
        group = [record(n, run_of(n)) for n in range(start, min(count, start + 100))]
        channel.basic_publish("", spec.results_name, json.dumps(group).encode())
    connection.close()  # (a connection left idle while the server reads would lose its heartbeat)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as directory:
        server = subprocess.Popen([sys.executable, str(root / "task_report.py"), "--serve",
                                   "--queue", queue, "--bind", f"127.0.0.1:{port}",
                                   "--no-browser", "--reports-dir", directory], cwd=directory,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert server.stdout is not None
            printed = re.search(r"token=(\S+)", server.stdout.readline())
            if printed is None:
                raise RuntimeError("the dashboard printed no address with a token")
            token = printed[1]
            status = Path(f"/proc/{server.pid}/status")
            began, start_mb = time.monotonic(), _rss(status)
            while _metric(port, token, "taskqueue_tasks_total") < count:
                time.sleep(1)
            yield Server(server.pid, port, token, start_mb, _rss(status),
                         time.monotonic() - began)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
            connection = pika.BlockingConnection(pika.URLParameters(url))
            QueueRemover(connection, spec).remove(force=True)
            connection.close()


def tabs_cost(server: Server, shown: list[str], others: list[str], hold: float = 30
              ) -> list[Moment]:
    """One headless chromium through the printed address: no tab, 1 live tab, then TABS, then
    the pages of the runs *shown* as well, each held *hold* seconds; all closed; then those
    run pages again and the *others*', each opened and closed."""
    from playwright.sync_api import sync_playwright

    from tests.dashboard import CHROMIUM, CHROMIUM_ARGS

    base = f"http://127.0.0.1:{server.port}/"
    moments = [server.moment("no tab (all records read)", hold)]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            first = context.new_page()
            first.goto(f"{base}?token={server.token}")  # the session cookie, for every tab
            first.wait_for_selector("#connection.ok", timeout=60_000)
            server.wait_for(1)
            moments.append(server.moment("1 live tab", hold))
            pages = [first] + [context.new_page() for _ in range(TABS - 1)]
            for page in pages[1:]:
                page.goto(base)
            for page in pages:  # every tab live: a snapshot came through the shared stream
                page.wait_for_selector("#connection.ok", timeout=60_000)
            moments.append(server.moment(f"{TABS} live tabs", hold))
            open_runs(context, base, shown)
            moments.append(server.moment(f"{TABS} live tabs + {len(shown)} run pages", hold))
            context.close()
            server.wait_for(0, connections=0)
            moments.append(server.moment("all closed"))
            for what, again in ((f"the same {len(shown)} runs' pages again", shown),
                                (f"{len(others)} other runs' pages", others)):  # kept? per run?
                context = browser.new_context()
                context.new_page().goto(f"{base}?token={server.token}")
                open_runs(context, base, again)
                context.close()
                server.wait_for(0, connections=0)
                moments.append(server.moment(f"{what}, then closed"))
        finally:
            browser.close()
    return moments


def open_runs(context: Any, base: str, runs: list[str]) -> None:
    """A tab of each run's page, each waited for until its table is shown and it is live."""
    for run in runs:
        page = context.new_page()
        page.goto(f"{base}runs/{run}")
        page.wait_for_selector("#tasks tbody tr", timeout=120_000)
        page.wait_for_selector("#connection.ok", timeout=60_000)


def _rss(status: Path) -> float:
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def _connections(port: int) -> int:
    """Established TCP connections whose local end is *port* (the server's side of each)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, _remote, state = line.split()[1:4]
            count += state == "01" and int(local.rsplit(":", 1)[1], 16) == port
    return count


def _metric(port: int, token: str, name: str) -> float:
    """The sum of the samples *name* in the server's /metrics."""
    import http.client

    from prometheus_client.parser import text_string_to_metric_families

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"})
    body = connection.getresponse().read().decode()
    connection.close()
    return sum(sample.value for family in text_string_to_metric_families(body)
               for sample in family.samples if sample.name == name)


def tabs_lines(server: Server, count: int, moments: list[Moment], hold: float) -> list[str]:
    lines = ["", f"A real dashboard (`task_report.py --serve`) reading {count:,} records from a "
             f"results stream on the broker: {server.start_mb:.0f} MB of RSS at start, "
             f"{server.read_mb:.0f} MB once all were read ({server.seconds:.0f} s; the run "
             "pages' copies are files, not memory).", "",
             "Then one headless chromium (Playwright) opens its pages through the printed "
             f"address, every tab waited for until live; each step held {hold:.0f} s and the "
             "server measured at its end (its CPU: its share of one core over the hold):", "",
             "| the browser holds | server RSS | live streams (its gauge) | TCP connections "
             "to it | server CPU over the hold |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {m.what} | {m.rss_mb:.1f} MB | {m.streams:.0f} | {m.connections} | "
              f"{'-' if m.cpu is None else f'{m.cpu:.1%}'} |" for m in moments]
    none, one, many, runs, closed, same, other = moments
    lines += ["", f"RSS growth per live tab: {(many.rss_mb - one.rss_mb) / (TABS - 1):+.2f} MB "
              f"(1 tab to {TABS}); {(many.rss_mb - none.rss_mb) / TABS:+.2f} MB a tab from "
              "none. The tabs share one stream (a SharedWorker, static/stream-worker.js): the "
              "server sends one snapshot a second to one connection whatever their number."]
    lines += ["", f"Run pages: opening {RUN_PAGES} (runs of 100,000 tasks) took the server from "
              f"{many.rss_mb:.0f} MB to {runs.rss_mb:.0f} MB, {closed.rss_mb:.0f} MB once every "
              f"tab was closed; the same runs' pages again: {same.rss_mb:.0f} MB; {RUN_PAGES} "
              f"other runs' pages: {other.rss_mb:.0f} MB. A run's index, made for its page, is "
              f"kept for the {KEPT_INDEXES} runs viewed last (web/runs.py): the cost is bounded "
              "by that, not by the runs viewed nor by the tabs."]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write bench/web.md")
    parser.add_argument("--broker", type=int, metavar="N",
                        help="also measure a real dashboard reading N records, then its tabs")
    parser.add_argument("--hold", type=float, default=30, metavar="S",
                        help="seconds each number of tabs is held open (default 30)")
    args = parser.parse_args()
    grown = memory()
    baseline, cold, filtered, searched = first_page(100_000)
    lines = ["# The web view's costs (bench/web.py)", "",
             f"Measured {time.strftime('%Y-%m-%d')} on this machine (2 cores), Python "
             f"{sys.version.split()[0]}.", "",
             "| records read by the dashboard | memory kept (RSS growth) |", "|---:|---:|"]
    lines += [f"| {n:,} | {mb:.1f} MB |" for n, mb in grown]
    lines += ["", "| a 100k-task run | seconds | against the CSV of the run |", "|---|---:|---:|",
              f"| the run's CSV (`task_report.py --csv`, baseline) | {baseline:.2f} | 1.00x |",
              f"| first page of its table (50 tasks) | {cold:.2f} | {cold / baseline:.2f}x |",
              f"| then page 2 of its dead tasks | {filtered:.3f} | "
              f"{filtered / baseline:.3f}x |",
              f"| a text search over its tasks | {searched:.2f} | {searched / baseline:.2f}x |",
              "", "The first page reads the run's copy once (the index: per task, where its "
              "deciding record is); every later page reads its own 50 records. The server's "
              "feed writes the copy as it reads the results stream: a page never reads the "
              "broker."]
    if args.broker:
        with real_dashboard(args.broker) as server:
            runs = sorted({run_of(n) for n in range(0, args.broker, 100_000)})
            moments = tabs_cost(server, runs[:RUN_PAGES], runs[RUN_PAGES:2 * RUN_PAGES],
                                hold=args.hold)
        lines += tabs_lines(server, args.broker, moments, args.hold)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        (Path(__file__).parent / "web.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
