#!/usr/bin/env python3
"""The pictures of the web view in README.md and docs/web.md, taken from real runs on the local
broker with Debian's chromium (headless, driven by Playwright, 1280x900), each cropped to the
page's content:

* live.png, task.png, run.png, dead.png: a queue ``screens.<random>``, two workers of two slots
  (scripts/screenshot_tasks.py: progress told, some tasks failing), its dashboard, two
  overlapping runs;
* overview.png, rate.png: one dashboard of two queues (``--queue A --queue B``): the overview
  of both, and the live page of the second, whose workers apply ``task_control.py rate-limit
  1/s --per-key`` to tasks keyed by host (``emitter_of_tasks.py --header --key-column host``):
  slots "waiting for the rate limit".

At the end, even on error, every process it started is stopped (by its pid) and its queues are
deleted with all their companions (QueueSpec.everything: task_control.py delete-queue).

    python scripts/screenshots.py [NAME ...]   # only these pictures (live, task, run, dead,
                                               # overview, rate; live..dead come together)
    # needs the broker on 127.0.0.1:5672 and /usr/bin/chromium
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "img"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update"]
HANDLER = "scripts.screenshot_tasks:convert"
FETCH_HANDLER = "scripts.screenshot_tasks:fetch"
RUN_ROWS_SHOWN = 10  # of the run page's table, sorted: the picture ends there
FLAKY_ROW = 4  # run A's row 4 fails once, then is done: the task page's two attempts
# Every card of the live page final: done + dead (+ cancelled) reached the run's total.
ALL_FINAL = """() => {
  const cards = document.querySelectorAll('.run-card');
  return cards.length >= 2 && [...cards].every((card) => {
    const n = (name) => card.querySelector(`[data-figure="${name}"]`).textContent;
    const [done, total] = n('done').split(' / ').map(Number);
    return total > 0 && done + Number(n('dead')) + Number(n('cancelled')) >= total;
  });
}"""
# A slot of the live page waiting for its turn with a second or more left (not "0 s left").
WAITING_SECONDS = """() => [...document.querySelectorAll('#workers tr.slot')]
  .some((row) => /waiting for the rate limit, [1-9][0-9]* s left/.test(row.textContent))"""
CONTENT_BOTTOM = """() => Math.ceil(Math.max(...[...document.body.querySelectorAll('*')]
  .map((node) => node.getBoundingClientRect().bottom + window.scrollY)))"""


def run_a() -> list[str]:
    """Scanned documents, 3 to 7 pages each; a few broken ones, one flaky."""
    rows = [f"convert scan_{n:03d}.tiff " + "." * (3 + n % 5) for n in range(1, 41)]
    for index in (7, 15, 23, 31):
        rows[index] = f"convert boom_scan_{index + 1:03d}.tiff ....."
    rows[FLAKY_ROW - 1] = "convert flaky_scan_004.tiff ...."
    return rows


def run_b() -> list[str]:
    """A second, later run that overlaps the first: invoices of 8 to 12 pages."""
    rows = [f"convert invoice_{n:03d}.tiff " + "." * (8 + n % 5) for n in range(1, 13)]
    rows[5] = "convert boom_invoice_006.tiff ......"
    return rows


def keyed_fetches() -> list[str]:
    """A CSV of page fetches, each keyed by its host (the rate limit's key)."""
    hosts = ["api.example.com", "shop.example.net", "cdn.example.org"]
    rows = [f"fetch https://{hosts[n % 3]}/orders/{n:04d} ....,{hosts[n % 3]}"
            for n in range(1, 61)]
    return ["task,host", *rows]


class Demo:
    """The processes of one demo: the dashboard and the workers, each stopped by its pid; its
    queues (``screens.<random>``, or ``screens.<what>.<random>`` for each of *whats*)."""

    def __init__(self, work: Path, *whats: str) -> None:
        self.work = work
        tag = secrets.token_hex(4)
        self.queues = [f"screens.{what}.{tag}" for what in whats] or [f"screens.{tag}"]
        self.queue = self.queues[0]
        self.processes: list[subprocess.Popen] = []

    def start(self, *args: str, **kwargs: Any) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, str(ROOT / args[0]), *args[1:]], cwd=ROOT,
                                   stdin=subprocess.DEVNULL, **kwargs)
        self.processes.append(process)
        return process

    def dashboard(self) -> str:
        """Start it, of every queue; its address (with the one-time token) once printed."""
        log = self.work / "dashboard.out"
        queues = [arg for queue in self.queues for arg in ("--queue", queue)]
        with open(log, "w") as out:
            self.start("task_report.py", "--serve", *queues, "--bind",
                       f"127.0.0.1:{free_port()}", "--no-browser", "--reports-dir",
                       str(self.work), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while "token=" not in log.read_text():
            if time.monotonic() > deadline or self.processes[0].poll() is not None:
                raise RuntimeError(f"the dashboard did not start: {log.read_text()[-500:]}")
            time.sleep(0.2)
        found = re.search(r"http://\S+", log.read_text())
        assert found is not None
        return found[0]

    def workers(self, *names: str, queue: str = "", handler: str = HANDLER,
                concurrency: int = 2) -> None:
        env = {**os.environ, "SCREENS_DIR": str(self.work)}
        for name in names:
            self.start("listening_worker.py", "--queue", queue or self.queue, "--name", name,
                       "--concurrency", str(concurrency), "--handler", handler,
                       "--max-retries", "1", "--retry-delay", "0.5", env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def emit(self, name: str, rows: list[str], *options: str, queue: str = "") -> None:
        """One run: the emitter returns once the broker confirmed every task."""
        path = self.work / f"{name}.csv"
        path.write_text("\n".join(rows) + "\n")
        self.control("emitter_of_tasks.py", "--queue", queue or self.queue, "--file",
                     str(path), "--no-admin", *options)

    def control(self, script: str, *args: str) -> None:
        """A command that ends (task_control.py, the emitter): it must succeed."""
        subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, check=True,
                       capture_output=True, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        """Every process started, by its pid; then the queue and its companions."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for queue in self.queues:
            removed = subprocess.run([sys.executable, str(ROOT / "task_control.py"),
                                      "delete-queue", "--queue", queue, "--yes"], cwd=ROOT,
                                     capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if removed.returncode:
                print(f"delete-queue {queue}: {removed.stderr.strip()}", file=sys.stderr)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shoot(page: Any, name: str, down_to: str = "") -> None:
    """The page down to its last element (no empty viewport below it), or down to the
    element *down_to* (a selector): a long table's first rows."""
    bottom = page.locator(down_to).bounding_box() if down_to else None
    height = round(bottom["y"] + bottom["height"]) if bottom else \
        page.evaluate(CONTENT_BOTTOM) + 16
    height = min(height, 2400)
    page.screenshot(path=str(IMAGES / name), full_page=True,
                    clip={"x": 0, "y": 0, "width": 1280, "height": height})
    print(f"wrote docs/img/{name} ({(IMAGES / name).stat().st_size // 1024} kB)")


def take(page: Any, address: str) -> None:
    root = address.split("?")[0]
    page.goto(address)
    page.wait_for_function("() => document.querySelectorAll('.run-card').length >= 2 && "
                           "document.querySelector('.task-progress progress') !== null",
                           timeout=60_000)
    time.sleep(1.5)  # a few tasks done, a failure listed
    shoot(page, "live.png")
    first_run = page.locator(".run-card [data-figure=link]").last.inner_text()
    page.wait_for_function(ALL_FINAL, timeout=180_000)
    page.goto(f"{root}runs/{first_run}/tasks/{FLAKY_ROW}")
    page.wait_for_selector("#task-attempts tbody tr:nth-child(2)")
    shoot(page, "task.png")
    page.goto(f"{root}runs/{first_run}")
    page.wait_for_selector("#tasks tbody tr")
    for _ in range(2):  # the second click: the most attempts first (dead, then retried)
        with page.expect_response(re.compile(r"tasks\.json")):
            page.click("#tasks th[data-sort=attempts]")
    page.wait_for_selector("#tasks th[aria-sort=descending]")
    shoot(page, "run.png", down_to=f"#tasks tbody tr:nth-child({RUN_ROWS_SHOWN})")
    page.goto(f"{root}dead?run={first_run}")
    page.click(".all-of-reason >> nth=0")
    page.wait_for_selector("#of-reason #reason-tasks li")
    shoot(page, "dead.png")


def take_queues(page: Any, address: str, demo: Demo) -> None:
    """The overview of both queues, then the rate-limited queue's live page."""
    fetches = demo.queues[1]
    page.goto(address)
    page.wait_for_function("() => [...document.querySelectorAll('#overview [data-figure=done]')]"
                           ".every((cell) => Number(cell.textContent) > 0)", timeout=90_000)
    time.sleep(2.5)  # one more read of overview.json: the figures of the same moment
    shoot(page, "overview.png")
    page.click(f"#overview tr[data-queue='{fetches}'] a")
    page.wait_for_selector("#rate-limit:not([hidden])", timeout=60_000)
    page.wait_for_function(WAITING_SECONDS, timeout=60_000)
    shoot(page, "rate.png")


def single_queue(work: Path, browser: Any) -> None:
    """live, task, run and dead: one queue, two overlapping runs."""
    demo = Demo(work)
    try:
        address = demo.dashboard()
        demo.workers("alice", "bob")
        demo.emit("scans", run_a())
        time.sleep(3)  # the second run starts while the first is going on
        demo.emit("invoices", run_b())
        take(browser.new_page(viewport={"width": 1280, "height": 900}), address)
    finally:
        demo.stop()


def two_queues(work: Path, browser: Any) -> None:
    """overview and rate: a dashboard of two queues, the second under a rate limit per key."""
    demo = Demo(work, "scans", "fetch")
    scans, fetches = demo.queues
    try:
        demo.control("task_control.py", "rate-limit", "1/s", "--per-key", "--queue", fetches)
        address = demo.dashboard()
        demo.workers("alice", "bob", queue=scans)
        demo.workers("carol", "dave", queue=fetches, handler=FETCH_HANDLER, concurrency=4)
        demo.emit("scans", run_a(), queue=scans)
        demo.emit("fetches", keyed_fetches(), "--header", "--key-column", "host", queue=fetches)
        take_queues(browser.new_page(viewport={"width": 1280, "height": 900}), address, demo)
    finally:
        demo.stop()


SETS = {"live": single_queue, "task": single_queue, "run": single_queue, "dead": single_queue,
        "overview": two_queues, "rate": two_queues}


def main() -> int:
    from playwright.sync_api import sync_playwright

    asked = set(sys.argv[1:]) or set(SETS)
    unknown = asked - set(SETS)
    if unknown:
        print(f"no such picture: {', '.join(sorted(unknown))} (of {', '.join(SETS)})",
              file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="tq-shots-"))
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                                 args=CHROMIUM_ARGS)
            try:
                for take_set in dict.fromkeys(SETS[name] for name in asked):
                    take_set(work, browser)
            finally:
                browser.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
