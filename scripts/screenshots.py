#!/usr/bin/env python3
"""The README's pictures of the web view, taken from a real run: queue ``demo_web``, three
workers (one fails the tasks that say "boom"), the dashboard, Debian's chromium (headless,
driven by Playwright). Writes docs/img/live.png and docs/img/run.png, then deletes the queue.

    python scripts/screenshots.py      # needs the broker on 127.0.0.1:5672 and /usr/bin/chromium
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "demo_web"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update"]


def script(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / args[0]), *args[1:]], cwd=ROOT,
                            stdin=subprocess.DEVNULL, **kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="tq-shots-"))
    rows = [f"resize photo_{n:03d}.jpg" + "." * (3 + n % 5) for n in range(90)]
    rows[17] = "resize boom_corrupt.jpg ..."
    rows[55] = "resize boom_truncated.jpg ...."
    (work / "tasks.csv").write_text("\n".join(rows) + "\n")
    port = free_port()
    out = open(work / "dashboard.out", "w")  # noqa: SIM115 - as long as the server
    processes = [script("task_report.py", "--serve", "--queue", QUEUE, "--bind",
                        f"127.0.0.1:{port}", "--no-browser", "--reports-dir", str(work),
                        stdout=out, stderr=subprocess.STDOUT)]
    try:
        for name in ("alice", "bob", "carol"):
            processes.append(script("listening_worker.py", "--queue", QUEUE, "--name", name,
                                    "--concurrency", "2", "--handler",
                                    "scripts.screenshot_tasks:resize", "--max-retries", "1",
                                    "--retry-delay", "0.5", stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL))
        subprocess.run([sys.executable, str(ROOT / "emitter_of_tasks.py"), "--queue", QUEUE,
                        "--file", str(work / "tasks.csv"), "--no-admin"], cwd=ROOT, check=True,
                       capture_output=True)
        while "token=" not in (work / "dashboard.out").read_text():
            time.sleep(0.2)
        address = re.search(r"http://\S+", (work / "dashboard.out").read_text())[0]
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                                 args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 820})
            page.goto(address)
            time.sleep(6)  # mid-run: workers busy, a failure or two
            page.screenshot(path=str(ROOT / "docs" / "img" / "live.png"))
            while "/ 90" not in page.inner_text("#r-done") or \
                    int(page.inner_text("#r-done").split(" /")[0]) + int(
                        page.inner_text("#r-dead")) < 90:
                time.sleep(0.5)
            page.click("#run-link")
            page.wait_for_selector("#tasks tbody tr")
            page.select_option("#filter select[name=outcome]", "dead")
            page.click("#filter button")
            page.wait_for_selector("#tasks tbody tr.dead")
            page.locator("#tasks tbody tr.dead").first.click()
            page.wait_for_selector("#attempts:not([hidden]) tbody tr")
            page.screenshot(path=str(ROOT / "docs" / "img" / "run.png"), full_page=True)
            browser.close()
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
        subprocess.run([sys.executable, str(ROOT / "task_control.py"), "delete-queue", "--queue",
                        QUEUE, "--yes"], cwd=ROOT, capture_output=True)
    print("wrote docs/img/live.png and docs/img/run.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
